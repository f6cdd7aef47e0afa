"""Error answers in plain ASGI: JSON for HTTP, an HTTP denial or a close for WebSockets."""

from __future__ import annotations

import json
from typing import Any

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
    body = json.dumps(exc.body()).encode()
    if "websocket.http.response" in scope.get("extensions", {}):
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
        await send(
            {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send(
        {"type": "websocket.close", "code": ws_close_code(exc.status), "reason": exc.message[:120]}
    )


def ws_close_code(status: int) -> int:
    if status == 503:
        return 1013  # try again later
    if 400 <= status < 500:
        return 1008  # policy violation
    return 1011


def json_body(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
