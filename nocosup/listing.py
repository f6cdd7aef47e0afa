"""Paging and filtering of ``GET /api/apps``: the query, its validation and the cursor.

Apps are listed in name order, so a page is a range scan of the registry's primary key
(``name > cursor``) and stays cheap at any depth. The cursor is opaque to clients: the
last name of the previous page, base64url-encoded, so its form can change later.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from nocosup.errors import InvalidInput
from nocosup.status import AppStatus
from nocosup.validation import APP_NAME, ENV_NAME

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Query parameters of ``GET /api/apps``; any other is refused so a typo is not ignored.
PARAMETERS = ("limit", "cursor", "status", "environment", "prefix")
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class AppQuery:
    """One page request: where to start, how many, and which apps count."""

    limit: int = DEFAULT_LIMIT
    after: str | None = None
    status: str | None = None
    environment: str | None = None
    prefix: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> AppQuery:
        for key in params:
            if key not in PARAMETERS:
                raise InvalidInput(
                    f"unknown query parameter {key!r}; expected one of {', '.join(PARAMETERS)}",
                    field=key,
                )
        return cls(
            limit=_limit(params.get("limit")),
            after=decode_cursor(params["cursor"]) if "cursor" in params else None,
            status=_status(params.get("status")),
            environment=_environment(params.get("environment")),
            prefix=_prefix(params.get("prefix")),
        )


def encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(value: str) -> str:
    """The app name a cursor continues after; 422 for anything this server did not make."""
    try:
        name = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not APP_NAME.fullmatch(name) or encode_cursor(name) != value:
        raise InvalidInput(
            "cursor is not valid: pass the next_cursor of a previous page unchanged",
            field="cursor",
        )
    return name


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidInput(
            f"limit must be a whole number from 1 to {MAX_LIMIT}; got {value!r}", field="limit"
        )
    return int(value)


def _status(value: str | None) -> str | None:
    if value is None:
        return None
    known = [s.value for s in AppStatus]
    if value not in known:
        raise InvalidInput(
            f"status must be one of {', '.join(known)}; got {value!r}", field="status"
        )
    return value


def _environment(value: str | None) -> str | None:
    if value is None:
        return None
    if not ENV_NAME.fullmatch(value):
        raise InvalidInput(
            f"environment is not an environment name: {value!r}", field="environment"
        )
    return value


def _prefix(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 40 or not set(value) <= _PREFIX_CHARS:
        raise InvalidInput(
            f"prefix must be at most 40 lowercase letters, digits, '_' or '-'; got {value!r}",
            field="prefix",
        )
    return value
