"""uvicorn's request/response cycle, writing a response's head and first body bytes at once.

uvicorn writes the head of a response when the app sends ``http.response.start`` and the
body when it sends ``http.response.body``: two writes, so usually two TCP segments, for
every small JSON answer. Besides the extra system call, a process killed between the two
leaves its peer with a head and no body. A load balancer (HAProxy's ``retry-on
empty-response``) retries a request whose answer never began, not one cut after its head,
so its client sees a truncated response (``tests/test_compose.py`` saw one in CI).

:class:`CoalescingCycle` holds the head (framed and checked at once, as uvicorn does, so
a bad header still raises in the app's ``send``) until the first body message and writes
both in one ``write``. An app that sends the head and then waits before its body (a
stream: ``GET /api/events``, a slow generator) gets the head written at the loop's next
turn, so nothing is delayed beyond the current step of its task.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

__all__ = ["CoalescingCycle"]

#: A first body part up to this size is joined to the head; a larger one is written after
#: it in the same ``writelines`` (no copy of a big chunk just to save a call).
JOIN_LIMIT = 64 * 1024


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's cycle whose ``send`` writes the response head with the first body part."""

    #: The framed response head, sent by the app and not yet written.
    held: bytes | None = None
    #: Write a held head at the loop's next turn when no body message came by then (any
    #: ASGI app); False where the sender always follows the head with a body message at
    #: once (nocosup's proxy, nocosup.fastpath), which saves scheduling a callback.
    flush_soon: ClassVar[bool] = True
    #: Response header names come from nocosup or an HTTP parser (tokens): not checked.
    trusted_names: ClassVar[bool] = False

    async def send(self, message: Message) -> None:  # type: ignore[override]
        held = self.held
        if held is None:
            if message["type"] == "http.response.start" and not self.response_started:
                if self.flow.write_paused and not self.disconnected:
                    await self.flow.drain()
                if not self.disconnected:
                    self.held = self._head(message)
                    if self.flush_soon:
                        asyncio.get_running_loop().call_soon(self.flush)
                return
            await super().send(message)  # type: ignore[arg-type]
            return
        if message["type"] != "http.response.body":
            self.flush()
            await super().send(message)  # type: ignore[arg-type]  # refused as uvicorn does
            return
        self.held = None
        if not self.disconnected:
            self._write(held, message.get("body", b""), message.get("more_body", False))

    def flush(self) -> None:
        """Write the held head alone (the app is still producing its body)."""
        head = self.held
        if head is not None:
            self.held = None
            if not self.disconnected and not self.transport.is_closing():
                self.transport.write(head)

    def write_first(self, start: Message, body: bytes, more: bool) -> None:
        """Write the response head of ``start`` and the first ``body`` bytes at once
        (``more``: the body goes on); nothing once the client is gone."""
        if not self.disconnected:
            self._write(self._head(start), body, more)

    def _write(self, head: bytes, body: bytes, more: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            body = b""
        elif self.chunked_encoding:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                body += b"0\r\n\r\n"
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
        if len(body) <= JOIN_LIMIT:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        if not more:
            self._complete()

    def write_more(self, chunks: list[bytes], more: bool) -> None:
        """Write body bytes after :meth:`write_first`, framed as uvicorn frames them
        (``more`` False ends the response)."""
        if self.disconnected or self.response_complete:
            return
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
        elif self.chunked_encoding:
            parts: list[bytes] = []
            for chunk in chunks:
                if chunk:
                    parts += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
            if not more:
                parts.append(b"0\r\n\r\n")
            if parts:
                self.transport.writelines(parts)
        elif chunks:
            size = sum(map(len, chunks))
            if size > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= size
            self.transport.writelines(chunks)
        if not more:
            self._complete()

    def _complete(self) -> None:
        """The response's last byte is written: check its length, close or keep alive."""
        if self.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _head(self, message: Message) -> bytes:
        """The status line and headers of ``message``, framed and checked as uvicorn
        frames and checks them (the response counts as started from here)."""
        status: int = message["status"]
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        content = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            content += (name, b": ", value, b"\r\n")
        closing = False
        check_names = not self.trusted_names
        for name, value in message.get("headers", ()):
            if check_names and HEADER_RE.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    closing = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closing:
            content.append(b"connection: close\r\n")
        if (
            self.chunked_encoding is None
            and self.scope["method"] != "HEAD"
            and status not in (204, 304)
        ):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)
