"""Checks of admin API input: every failure is an InvalidInput naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

from nocosup.errors import InvalidInput

#: Matched with fullmatch: a "$" anchor would let a trailing newline through.
APP_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
START_MODES = ("on_first_request", "with_supervisor")
MAX_TITLE = 200
MAX_BODY = 1 << 20
CREATE_FIELDS = ("name", "title", "environments", "options")
PATCH_FIELDS = ("title", "options")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 422 INVALID_JSON."""
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"request body is larger than {MAX_BODY} bytes", code="INVALID_JSON")
    try:
        data = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", code="INVALID_JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object", code="INVALID_JSON")
    return data


def check_fields(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise InvalidInput(f"unknown field {key!r}; allowed: {', '.join(allowed)}", field=key)


def app_name(value: Any) -> str:
    if not isinstance(value, str) or not APP_NAME.fullmatch(value):
        raise InvalidInput(
            "name must start with a lowercase letter and hold at most 40 lowercase letters, "
            f"digits, '_' or '-'; got {value!r}",
            field="name",
        )
    return value


def title(value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("title must be a non-empty string", field="title")
    if len(value) > MAX_TITLE:
        raise InvalidInput(f"title must be at most {MAX_TITLE} characters", field="title")
    return value.strip()


def environments(value: Any) -> list[str] | None:
    """A list of distinct environment names, or None when not given."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidInput(
            "environments must be a non-empty list of environment names", field="environments"
        )
    if len(set(value)) != len(value):
        raise InvalidInput("environments must not repeat a name", field="environments")
    return list(value)


def options(value: Any) -> dict[str, Any]:
    """App options with their defaults filled in; free keys pass through to the app."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInput("options must be a JSON object", field="options")
    out = dict(value)
    mode = out.setdefault("startMode", "on_first_request")
    if mode not in START_MODES:
        raise InvalidInput(
            f"options.startMode must be one of {', '.join(START_MODES)}; got {mode!r}",
            field="options.startMode",
        )
    for key in ("dbConnType", "dbProvisioner"):
        # their values are checked against the loaded provisioners (TenantDatabases)
        if key in out and not isinstance(out[key], str):
            raise InvalidInput(f"options.{key} must be a string", field=f"options.{key}")
    return out


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes a key."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def flag(value: str | None, name: str, default: bool) -> bool:
    """A boolean query parameter (true/false/1/0/yes/no)."""
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise InvalidInput(f"query parameter {name} must be true or false; got {value!r}", field=name)
