"""WebSocket refusals: an HTTP denial response when the server supports one, else a close."""

from __future__ import annotations

import json
from typing import Any

from nocosup.errors import AppInitializing, AppNotFound
from nocosup.responses import close_reason, deny_websocket, send_error

DENIAL = {"extensions": {"websocket.http.response": {}}}


class Sent(list[dict[str, Any]]):
    async def __call__(self, message: dict[str, Any]) -> None:
        self.append(message)


async def _receive() -> dict[str, Any]:  # pragma: no cover - never called for a WebSocket
    raise AssertionError


async def test_denial_filters_headers_and_sets_the_length() -> None:
    sent = Sent()
    headers = [("X-Kept", "1"), ("Connection", "close"), ("Content-Length", "99")]
    await deny_websocket(
        {"type": "websocket", **DENIAL}, sent, 403, headers, b"no", drop={b"connection"}
    )
    assert sent == [
        {
            "type": "websocket.http.response.start",
            "status": 403,
            "headers": [(b"x-kept", b"1"), (b"content-length", b"2")],
        },
        {"type": "websocket.http.response.body", "body": b"no"},
    ]


async def test_without_the_extension_it_closes_with_the_matching_code() -> None:
    for status, code in ((503, 1013), (403, 1008), (502, 1011)):
        sent = Sent()
        await deny_websocket({"type": "websocket"}, sent, status, [("x", "y")], b"body")
        assert sent == [{"type": "websocket.close", "code": code, "reason": ""}]


async def test_send_error_on_a_websocket_is_the_json_error() -> None:
    sent = Sent()
    await send_error({"type": "websocket", **DENIAL}, _receive, sent, AppInitializing("a1"))
    start, body = sent
    assert start["status"] == 503
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"retry-after": b"2",
        b"content-length": str(len(body["body"])).encode(),
    }
    assert json.loads(body["body"])["error"]["code"] == "APP_INITIALIZING"

    sent = Sent()
    await send_error({"type": "websocket"}, _receive, sent, AppNotFound("é" * 100))
    (close,) = sent
    assert (close["type"], close["code"]) == ("websocket.close", 1008)
    assert close["reason"].startswith("application 'éé")
    assert len(close["reason"].encode()) <= 123  # what a close frame can carry


def test_close_reason_cuts_at_a_character_boundary() -> None:
    assert close_reason(None) == ""
    assert close_reason("bye") == "bye"
    assert close_reason("é" * 100) == "é" * 61
