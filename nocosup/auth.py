"""Who may use the admin API, and how the page's session cookie is kept from misuse.

Two credentials open the admin API: the admin token (``NOCOSUP_ADMIN_TOKEN``, else
generated once and kept in the storage dir) as ``Authorization: Bearer``, and the web
page's session cookie, which holds an opaque session id (:mod:`nocosup.sessions`), never
the token. A write authenticated by the cookie must also look like the page sent it
(:func:`check_csrf`). Failed logins are counted per client address (:class:`LoginLimiter`).
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Scope

from nocosup.config import Settings, check_admin_token
from nocosup.errors import CsrfRejected, TooManyLogins, Unauthorized

log = logging.getLogger("nocosup.auth")

#: The web page's HttpOnly session cookie (its value is a session id, not the token).
COOKIE_NAME = "nocosup_admin"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def resolve_admin_token(settings: Settings) -> str:
    """The configured token, or the one in ``<storage>/admin_token`` (made if missing)."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.admin_token_file
    if path.exists():
        token = path.read_text().strip()
        if token:
            check_admin_token(token, f"the admin token in {path.resolve()}")
            log.warning("admin token read from %s", path.resolve())
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.warning("admin token generated and written to %s", path.resolve())
    return token


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# --- who is asking: the host resolved forwarded headers already (nocosup.forwarded) ---------


def client_address(scope: Scope) -> str:
    """The client's address: the peer's, or the one a trusted proxy vouched for."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def is_https(scope: Scope) -> bool:
    """Whether the client reached us over https, directly or through a trusted proxy."""
    return scope.get("scheme") in ("https", "wss")


# --- the checks --------------------------------------------------------------------------


def check_csrf(conn: HTTPConnection) -> None:
    """A cookie-authenticated write must come from the page: a JSON body (when there is a
    body) and a same-origin ``Origin`` or ``Sec-Fetch-Site: same-origin``. Browsers send
    both and let no other site forge them; a form or ``text/plain`` post from another
    site fails here."""
    headers = conn.headers
    has_body = headers.get("transfer-encoding") is not None or headers.get(
        "content-length", "0"
    ).strip() not in ("", "0")
    if has_body:
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise CsrfRejected(
                "a request authenticated by the session cookie must send its body as "
                "Content-Type: application/json"
            )
    if headers.get("sec-fetch-site", "").strip().lower() == "same-origin":
        return
    origin = headers.get("origin", "").strip().lower()
    scheme = "https" if is_https(conn.scope) else "http"
    host = headers.get("host", "").strip().lower()
    if origin and host and origin == f"{scheme}://{host}":
        return
    raise CsrfRejected(
        "a request authenticated by the session cookie must come from the page "
        "(a same-origin Origin or Sec-Fetch-Site header); scripts should send "
        "'Authorization: Bearer <token>'"
    )


async def check_admin(conn: HTTPConnection) -> None:
    """Let the request through if it carries the admin token as a Bearer header, or a live
    session cookie (then, for a write, only if :func:`check_csrf` passes)."""
    expected: str = conn.app.state.admin_token
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and token_matches(expected, value.strip()):
            return
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>'")
    session = conn.cookies.get(COOKIE_NAME)
    sessions = getattr(conn.app.state, "sessions", None)
    if session is None or sessions is None or not await sessions.valid(session):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>'")
    if conn.scope["type"] == "http" and conn.scope["method"] in UNSAFE_METHODS:
        check_csrf(conn)


Endpoint = Callable[[Request], Awaitable[Response]]


def admin_only(endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so it answers 401 unless the caller holds the admin token or a
    session (and 403 for a cookie-authenticated write the page did not send)."""

    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        await check_admin(request)
        return await endpoint(request)

    return guarded


class LoginLimiter:
    """Failed logins per client address in a sliding window of :attr:`WINDOW` seconds.

    In memory, per process: each supervisor replica counts on its own, and a restart
    forgets. At most :attr:`MAX_ADDRESSES` addresses are tracked (the oldest go first)."""

    WINDOW = 60.0
    MAX_ADDRESSES = 10_000

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.WINDOW:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def check(self, address: str) -> None:
        """Raise TooManyLogins while ``address`` has used up its failures."""
        now = time.monotonic()
        times = self._recent(address, now)
        if times is not None and len(times) >= self.limit:
            wait = max(1, math.ceil(times[0] + self.WINDOW - now))
            raise TooManyLogins(
                f"too many failed logins from {address}; retry in {wait} s", retry_after=wait
            )

    def failed(self, address: str) -> None:
        now = time.monotonic()
        times = self._recent(address, now)
        if times is None:
            if len(self._failures) >= self.MAX_ADDRESSES:
                for old in list(self._failures)[: len(self._failures) // 10 + 1]:
                    del self._failures[old]
            times = self._failures[address] = deque()
        times.append(now)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
