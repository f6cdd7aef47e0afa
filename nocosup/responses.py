"""Error answers in plain ASGI: JSON for HTTP, an HTTP denial or a close for WebSockets
(also used by the proxy to relay an upstream's refusal of a WebSocket)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from nocosup.errors import NocosupError


def error_response(exc: NocosupError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def send_error(scope: Scope, receive: Receive, send: Send, exc: NocosupError) -> None:
    """Answer ``scope`` with ``exc``: a JSON response, or for a WebSocket the same JSON as a
    denial response when the server supports it, else a close with code 1013/1008/1011."""
    if scope["type"] == "http":
        await error_response(exc)(scope, receive, send)
        return
    await deny_websocket(
        scope,
        send,
        exc.status,
        [("content-type", "application/json"), *exc.headers().items()],
        json.dumps(exc.body()).encode(),
        reason=exc.message,
    )


async def deny_websocket(
    scope: Scope,
    send: Send,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    drop: Collection[bytes] = (),
    reason: str = "",
) -> None:
    """Refuse the WebSocket ``scope`` before accepting it: with the HTTP answer ``status``,
    ``headers`` and ``body`` when the server supports denial responses, else with a close
    whose code matches ``status`` (1013/1008/1011) and whose reason is ``reason``.

    Header names are lowercased; those in ``drop`` are left out, and Content-Length is
    always the length of ``body``.
    """
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send(
            {
                "type": "websocket.close",
                "code": ws_close_code(status),
                "reason": close_reason(reason),
            }
        )
        return
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        key = name.lower().encode("latin-1")
        if key not in drop and key != b"content-length":
            out.append((key, value.encode("latin-1")))
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "websocket.http.response.start", "status": status, "headers": out})
    await send({"type": "websocket.http.response.body", "body": body})


def ws_close_code(status: int) -> int:
    if status == 503:
        return 1013  # try again later
    if 400 <= status < 500:
        return 1008  # policy violation
    return 1011


def close_reason(reason: str | None) -> str:
    """``reason`` cut to the 123 UTF-8 bytes a close frame can carry."""
    data = (reason or "").encode("utf-8")[:123]
    return data.decode("utf-8", "ignore")
