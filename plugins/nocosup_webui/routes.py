"""The page's routes: ``/`` and ``/ui/*``, cookie login and logout, and ``/api/events``.

The login cookie holds an opaque session id (:mod:`nocosup.sessions`), never the admin
token: HttpOnly so scripts cannot read it, SameSite=Strict so other sites cannot ride on
it, Secure over https (also behind a trusted proxy), scoped to ``/api`` and taken out of
every request a tenant receives (``nocosup.host.without_admin_cookie``). Logout deletes the
session in the registry database, so a copied cookie stops working too.
"""

from __future__ import annotations

import functools
import hashlib
import html
import logging
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from nocosup import validation as v
from nocosup.auth import (
    COOKIE_NAME,
    check_admin,
    check_csrf,
    client_address,
    is_https,
    token_matches,
)
from nocosup.config import Settings
from nocosup.errors import NocosupError, ShuttingDown, Unauthorized
from nocosup.responses import error_response
from nocosup_webui.stream import STREAMS

log = logging.getLogger("nocosup.webui")

STATIC = ("nocosup_webui", "static")
ASSETS = ("app.js", "style.css")

#: The page runs only its own files: no inline script, nothing from other origins.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-cache",
}


@functools.cache
def _page_template() -> str:
    """index.html with asset links carrying a content hash, so a new release is refetched."""
    folder = resources.files(STATIC[0]).joinpath(STATIC[1])
    page = folder.joinpath("index.html").read_text(encoding="utf-8")
    for asset in ASSETS:
        digest = hashlib.sha256(folder.joinpath(asset).read_bytes()).hexdigest()[:12]
        page = page.replace(f'"ui/{asset}"', f'"ui/{asset}?v={digest}"')
    return page


async def index(request: Request) -> Response:
    # <base> makes every link of the page relative to where the host is mounted.
    root = html.escape(request.scope.get("root_path", "").rstrip("/") + "/", quote=True)
    page = _page_template().replace('<base href="/">', f'<base href="{root}">')
    return HTMLResponse(page, headers=PAGE_HEADERS)


def _cookie_path(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path.rstrip("/") + "/api"


async def login(request: Request) -> Response:
    settings: Settings = request.app.settings
    address = client_address(request.scope)
    limiter = request.app.state.login_limiter
    limiter.check(address)
    data = v.parse_json_object(await v.read_body(request))
    v.check_fields(data, ("token",))
    token = data.get("token")
    if not isinstance(token, str) or not token_matches(request.app.state.admin_token, token):
        limiter.failed(address)
        log.warning("failed login from %s", address)
        raise Unauthorized("wrong admin token")
    limiter.succeeded(address)
    session = await request.app.state.sessions.create()
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.set_cookie(
        COOKIE_NAME,
        session,
        max_age=int(settings.session_ttl),
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=is_https(request.scope),
    )
    return response


async def logout(request: Request) -> Response:
    """End the session (deleted from the database, so the cookie is dead even if copied)
    and delete the cookie. A cookie-carrying logout must come from the page (CSRF)."""
    session = request.cookies.get(COOKIE_NAME)
    if session is not None:
        check_csrf(request)
        await request.app.state.sessions.revoke(session)
    response = Response(status_code=204, headers={"cache-control": "no-store"})
    response.delete_cookie(
        COOKIE_NAME,
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=is_https(request.scope),
    )
    return response


class EventsEndpoint:
    """``GET /api/events``: the host's events as ``text/event-stream`` (admin only)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await check_admin(request)
        except NocosupError as exc:
            await error_response(exc)(scope, receive, send)
            return
        host = request.app
        streams = STREAMS.get(host)
        if streams is None or streams.closing.is_set():
            error = ShuttingDown("the supervisor is shutting down; retry shortly")
            await error_response(error)(scope, receive, send)
            return
        await streams.serve(host.events, scope, receive, send)


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/events", EventsEndpoint(), methods=["GET"]),
        Mount("/ui", StaticFiles(packages=[STATIC]), name="webui"),
    ]
