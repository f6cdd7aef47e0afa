"""Checks of admin API input: every failure is an InvalidInput naming the field."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request

from nocosup import strictjson
from nocosup.errors import InvalidInput, PayloadTooLarge

#: Matched with fullmatch: a "$" anchor would let a trailing newline through.
APP_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
#: Environment and instance names (also checked with fullmatch).
ENV_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
START_MODES = ("on_first_request", "with_supervisor")
MAX_TITLE = 200
#: Largest JSON body the admin API (and the login) reads: reading stops there (413).
MAX_BODY = 1 << 20
#: Bytes past a limit still read (and dropped) before the 413, so that a client that
#: overshoots a little gets the answer rather than a reset connection.
DRAIN = 1 << 20
#: Largest per-app body limit an app may ask for (options.maxBodySize): 64 GiB.
MAX_APP_BODY_SIZE = 1 << 36
#: A custom domain: a DNS host name in lowercase, labels of letters, digits and inner
#: hyphens, no port, no trailing dot, not an IP address (matched with fullmatch).
DOMAIN = re.compile(
    r"(?=.{1,253}\Z)"  # at most 253 characters
    r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"  # labels of up to 63
    r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?"  # the last starts with a letter: no IPv4 address
)
#: Custom domains one app may have.
MAX_DOMAINS = 20
CREATE_FIELDS = ("name", "title", "environments", "options", "domains", "template")
PATCH_FIELDS = ("title", "options", "domains")
MOVE_FIELDS = ("to",)
#: Longest options.idleTimeout (seconds): 30 days.
MAX_IDLE_TIMEOUT = 30 * 86400
#: Largest options.maxConcurrency and options.maxQueue.
MAX_CONCURRENCY = 100_000
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def declared_length(headers: Any) -> int | None:
    """The Content-Length of a request (a Headers mapping), None when absent or unreadable
    (the server checks its syntax; an unreadable one is no promise to rely on)."""
    raw = headers.get("content-length")
    if raw is None or not raw.isdigit() or len(raw) > 20:
        return None
    return int(raw)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, read as a stream that stops at ``limit`` bytes: 413
    PAYLOAD_TOO_LARGE, before reading at all when Content-Length announces more."""
    stream = request.stream()
    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        if declared <= limit + DRAIN:  # a little over: read it so the 413 arrives
            await _discard(stream)
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            await _discard(stream)
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(stream: AsyncIterator[bytes], budget: int = DRAIN) -> None:
    """Read and drop at most ``budget`` more bytes of ``stream``."""
    try:
        async for chunk in stream:
            budget -= len(chunk)
            if budget < 0:
                return
    except ClientDisconnect:
        return


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a strict JSON object, or 422 INVALID_JSON naming the problem."""
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(MAX_BODY)
    try:
        data = strictjson.loads(raw or b"{}")
    except strictjson.JSONRejected as exc:
        message = f"request body is not acceptable JSON: {exc.message}"
        raise InvalidInput(message, field=exc.path, code="INVALID_JSON") from None
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


def move_target(data: dict[str, Any]) -> str:
    """The environment a move names in ``to`` (a name; whether it is known is checked
    against the registered environments)."""
    check_fields(data, MOVE_FIELDS)
    to = data.get("to")
    if not isinstance(to, str) or not to:
        raise InvalidInput(
            'to is required: the environment to move the app to, as in {"to": "env_b"}',
            field="to",
        )
    return to


def domains(value: Any) -> list[str]:
    """Distinct custom domains, lowercased (DNS names are case-insensitive); ``[]`` when
    not given. Ports are not part of a domain: a request's Host matches without its port."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
        raise InvalidInput("domains must be a list of host names", field="domains")
    if len(value) > MAX_DOMAINS:
        raise InvalidInput(f"domains holds at most {MAX_DOMAINS} host names", field="domains")
    out: list[str] = []
    for raw in value:
        domain = raw.lower()
        if not DOMAIN.fullmatch(domain):
            raise InvalidInput(
                "each domain must be a host name such as crm.example.com (letters, digits, "
                f"'-' and '.', no port, no scheme, not an IP address); got {raw!r:.100}",
                field="domains",
            )
        if domain in out:
            raise InvalidInput(f"domains names {domain!r} twice", field="domains")
        out.append(domain)
    return out


def host_name(host: bytes) -> str:
    """The name part of a Host header value, lowercased: ``Crm.Example.com:8443`` ->
    ``crm.example.com`` (a bracketed IPv6 literal is kept whole)."""
    text = host.decode("latin-1").strip().lower()
    if text.endswith("]") or text.count(":") != 1:
        return text
    return text.partition(":")[0]


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
    if "maxBodySize" in out:
        size = out["maxBodySize"]
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or not 1 <= size <= MAX_APP_BODY_SIZE
        ):
            raise InvalidInput(
                f"options.maxBodySize must be a whole number of bytes from 1 to "
                f"{MAX_APP_BODY_SIZE}; got {size!r}",
                field="options.maxBodySize",
            )
    if "idleTimeout" in out:
        idle = out["idleTimeout"]
        if (
            not isinstance(idle, int | float)
            or isinstance(idle, bool)
            or not 0 <= idle <= MAX_IDLE_TIMEOUT
        ):
            raise InvalidInput(
                f"options.idleTimeout must be a number of seconds from 0 (never) to "
                f"{MAX_IDLE_TIMEOUT}; got {idle!r}",
                field="options.idleTimeout",
            )
    for key, low in (("maxConcurrency", 1), ("maxQueue", 0)):
        if key in out:
            count = out[key]
            if (
                not isinstance(count, int)
                or isinstance(count, bool)
                or not low <= count <= MAX_CONCURRENCY
            ):
                raise InvalidInput(
                    f"options.{key} must be a whole number from {low} to {MAX_CONCURRENCY}; "
                    f"got {count!r}",
                    field=f"options.{key}",
                )
    if "maxQueue" in out and "maxConcurrency" not in out:
        raise InvalidInput(
            "options.maxQueue needs options.maxConcurrency (the queue is of requests over it)",
            field="options.maxQueue",
        )
    if "failover" in out and not isinstance(out["failover"], bool):
        raise InvalidInput(
            f"options.failover must be true or false; got {out['failover']!r:.100}",
            field="options.failover",
        )
    for key in ("dbConnType", "dbProvisioner"):
        # their values are checked against the loaded provisioners (TenantDatabases)
        if key in out and not isinstance(out[key], str):
            raise InvalidInput(f"options.{key} must be a string", field=f"options.{key}")
    return out


def body_limit(options: Any, default: int) -> int:
    """The body limit of an app: its options.maxBodySize when valid, else ``default``."""
    size = options.get("maxBodySize") if isinstance(options, dict) else None
    if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_APP_BODY_SIZE:
        return size
    return default


def idle_timeout(options: Any, default: float) -> float:
    """Seconds without traffic before the app goes idle (0: never): its
    options.idleTimeout when valid, else ``default``."""
    value = options.get("idleTimeout") if isinstance(options, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= MAX_IDLE_TIMEOUT:
            return float(value)
    return default


def concurrency(options: Any) -> tuple[int, int]:
    """(options.maxConcurrency or 0 for no cap, options.maxQueue or 0), each when valid."""
    if not isinstance(options, dict):
        return 0, 0
    out: list[int] = []
    for key, low in (("maxConcurrency", 1), ("maxQueue", 0)):
        value = options.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out.append(value if low <= value <= MAX_CONCURRENCY else 0)
        else:
            out.append(0)
    return out[0], out[1]


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
