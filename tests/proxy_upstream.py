"""The upstream ("worker") app the proxy tests forward to, run by a real uvicorn process.

Everything lives under ``/apps/demo`` because the proxy forwards the full path. Counters
in ``STATE`` let a test see what the upstream saw (bytes received so far, streams still
running, how the last WebSocket was closed) through ``/apps/demo/state``.
"""

from __future__ import annotations

import asyncio
import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PATTERN = bytes(range(256)) * 256  # 64 KiB; bodies are this repeated and cut


def pattern(size: int) -> bytes:
    """Deterministic body of ``size`` bytes (tests rebuild it to compare)."""
    reps, rest = divmod(size, len(PATTERN))
    return PATTERN * reps + PATTERN[:rest]


STATE: dict[str, object] = {
    "received": 0,  # bytes read so far by the running /sink request
    "streams_started": 0,
    "streams_finished": 0,
    "ws_close": None,  # [code, reason] the last WebSocket client closed with
}


async def echo(request: Request) -> Response:
    """What the upstream received: method, target, headers and a digest of the body."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.url.query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
            "size": size,
            "sha256": digest.hexdigest(),
        }
    )


async def sink(request: Request) -> Response:
    """Counts bytes as they arrive so a test can see the upload streaming through."""
    STATE["received"] = 0
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        STATE["received"] = size
    return JSONResponse({"size": size})


async def blob(request: Request) -> Response:
    """``size`` bytes with a Content-Length."""
    return Response(pattern(int(request.query_params.get("size", "1024"))))


async def stream(request: Request) -> Response:
    """``size`` bytes, chunked, in ``chunk``-byte pieces."""
    size = int(request.query_params.get("size", "1024"))
    step = int(request.query_params.get("chunk", "65536"))
    body = pattern(size)

    async def pieces():
        for i in range(0, size, step):
            yield body[i : i + step]

    return StreamingResponse(pieces(), media_type="application/octet-stream")


async def drip(request: Request) -> Response:
    """An endless slow stream; ``streams_finished`` counts the ones that were stopped."""

    async def pieces():
        STATE["streams_started"] = int(STATE["streams_started"]) + 1  # type: ignore[call-overload]
        try:
            while True:
                yield b"x" * 1024
                await asyncio.sleep(0.02)
        finally:
            STATE["streams_finished"] = int(STATE["streams_finished"]) + 1  # type: ignore[call-overload]

    return StreamingResponse(pieces(), media_type="application/octet-stream")


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("delay", "2")))
    return JSONResponse({"slow": True})


async def cookie(request: Request) -> Response:
    response = JSONResponse({"set": True})
    response.set_cookie("session", "secret-of-client-a", httponly=True)
    return response


async def hop(request: Request) -> Response:
    """Answers with hop-by-hop headers the proxy must not pass on."""
    return Response(
        b"hop",
        headers={
            "Connection": "X-Hop-Named",
            "X-Hop-Named": "must-go",
            "Keep-Alive": "timeout=5",
            "Proxy-Authenticate": "Basic",
            "Trailer": "X-Trailer",
            "Upgrade": "h2c",
            "X-Kept": "yes",
        },
    )


async def state(request: Request) -> Response:
    return JSONResponse(STATE)


async def ws_echo(websocket: WebSocket) -> None:
    """Echoes text and bytes; ``close:<code>:<reason>`` closes with that code."""
    offered = websocket.scope.get("subprotocols", [])
    chosen = "chat" if "chat" in offered else None
    await websocket.accept(
        subprotocol=chosen, headers=[(b"set-cookie", b"ws=1"), (b"x-ws-upstream", b"yes")]
    )
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                STATE["ws_close"] = [message.get("code"), message.get("reason") or ""]
                return
            if message.get("text") is not None:
                text = message["text"]
                if text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await websocket.close(int(code), reason)
                    return
                if text == "headers":
                    await websocket.send_json(
                        [[k.decode(), v.decode()] for k, v in websocket.scope["headers"]]
                    )
                    continue
                await websocket.send_text(text)
            else:
                await websocket.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect as exc:  # pragma: no cover - receive() returns the message
        STATE["ws_close"] = [exc.code, exc.reason]


async def ws_deny(websocket: WebSocket) -> None:
    await websocket.close(1008)


app = Starlette(
    routes=[
        Route("/apps/demo/echo", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        Route("/apps/demo/echo/{rest:path}", echo, methods=["GET"]),
        Route("/apps/demo/sink", sink, methods=["POST"]),
        Route("/apps/demo/blob", blob, methods=["GET", "HEAD"]),
        Route("/apps/demo/stream", stream),
        Route("/apps/demo/drip", drip),
        Route("/apps/demo/slow", slow),
        Route("/apps/demo/cookie", cookie),
        Route("/apps/demo/hop", hop),
        Route("/apps/demo/state", state),
        WebSocketRoute("/apps/demo/ws", ws_echo),
        WebSocketRoute("/apps/demo/ws-deny", ws_deny),
    ]
)
