"""The admin token: from NOCOSUP_ADMIN_TOKEN, else generated once and kept in the storage dir."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from nocosup.config import Settings
from nocosup.errors import Unauthorized

log = logging.getLogger("nocosup.auth")

#: The web page keeps the token in this HttpOnly cookie after login.
COOKIE_NAME = "nocosup_admin"


def resolve_admin_token(settings: Settings) -> str:
    """The configured token, or the one in ``<storage>/admin_token`` (made if missing)."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.admin_token_file
    if path.exists():
        token = path.read_text().strip()
        if token:
            log.warning("admin token read from %s", path.resolve())
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.warning("admin token generated and written to %s", path.resolve())
    return token


def presented_token(conn: HTTPConnection) -> str | None:
    """The token a caller presents: ``Authorization: Bearer`` first, else the page's cookie."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return conn.cookies.get(COOKIE_NAME)


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def check_admin(conn: HTTPConnection) -> None:
    expected: str = conn.app.state.admin_token
    if not token_matches(expected, presented_token(conn)):
        raise Unauthorized("missing or wrong admin token: send 'Authorization: Bearer <token>'")


Endpoint = Callable[[Request], Awaitable[Response]]


def admin_only(endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so it answers 401 unless the caller holds the admin token."""

    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        check_admin(request)
        return await endpoint(request)

    return guarded
