"""The supervisor's fast path: proxied requests answered below uvicorn's ASGI layer.

A multi-environment supervisor spends most of a proxied request outside nocosup's proxy:
in the host's dispatch, in uvicorn's ASGI ``send`` (a header check per header, then one
``write`` for the head and another for the body: two system calls where one does), and
in the ASGI messages in between. :class:`FastHttpToolsProtocol` (chosen by
:func:`nocosup.server.uvicorn_options` for such a supervisor while
``NOCOSUP_PROXY_FAST_PATH=1``) cuts that short:

- once httptools has parsed a request head, it asks the app's ``fast_route(scope)``
  (:meth:`nocosup.host.Host.fast_route`) synchronously whether the request is plain tenant
  traffic it can dispatch without awaiting anything; if not (WebSocket upgrade, HTTP/1.0,
  the admin API, a slash redirect, a draining or not yet started host, uvicorn's
  ``limit_concurrency`` reached, an app wrapped by uvicorn middleware), the request goes
  through uvicorn's ASGI path unchanged;
- a taken request runs the callable ``fast_route`` returned (the same metrics, gateway,
  in-flight tracking and :class:`nocosup.proxy.Proxy` code as the ASGI path, so errors,
  fallbacks and header rules are the same bytes) in a :class:`FastCycle`, whose ``send``
  writes the response head and the first body bytes in one ``write``.

Everything else is uvicorn's own protocol and ours below it: the head-size limit and head
deadline (:class:`nocosup.server.LimitedHttpToolsProtocol`), request bodies (fixed length
or chunked, ``Expect: 100-continue``) read through the cycle's ``receive``, pipelining,
keep-alive, flow control both ways and client disconnects.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
from starlette.types import ASGIApp, Message, Scope
from uvicorn.protocols.http.httptools_impl import (
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from nocosup.server import LimitedHttpToolsProtocol

__all__ = ["FastCycle", "FastHttpToolsProtocol"]

#: A first body part up to this size is joined to the head; a larger one is written after
#: it in the same ``writelines`` (no copy of a big chunk just to save a call).
_JOIN_LIMIT = 64 * 1024

FastRouter = Callable[[Scope], ASGIApp | None]


class FastCycle(RequestResponseCycle):
    """uvicorn's request/response cycle whose ``send`` holds the response head until the
    first body message and writes both at once.

    Only nocosup's own code sends on it (the proxy, error answers), which always follows a
    ``http.response.start`` with a body message at once, so holding the head delays
    nothing. Response headers are checked for forbidden bytes in values as uvicorn does;
    names come from the upstream's parser (tokens) or from nocosup itself.
    """

    held: Message | None = None

    async def send(self, message: Message) -> None:  # type: ignore[override]
        if self.held is None:
            if message["type"] == "http.response.start" and not self.response_started:
                if self.flow.write_paused and not self.disconnected:
                    await self.flow.drain()
                if not self.disconnected:
                    self.held = message
                return
            await super().send(message)  # type: ignore[arg-type]
            return
        start, self.held = self.held, None
        if message["type"] != "http.response.body" or self.disconnected:
            await super().send(start)  # type: ignore[arg-type]
            await super().send(message)  # type: ignore[arg-type]
            return
        head = self._head(start)
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
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
        if len(body) <= _JOIN_LIMIT:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))
        if not more:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _head(self, message: Message) -> bytes:
        """The status line and headers of ``message``, framed as uvicorn frames them."""
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
        for name, value in message.get("headers", ()):
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


class FastHttpToolsProtocol(LimitedHttpToolsProtocol):
    """The head-guarded httptools protocol with the fast path of this module."""

    fast_route: FastRouter | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # uvicorn's middleware (trace logging) would hide the host: then no fast path
        self.fast_route = getattr(self.app, "fast_route", None)

    def on_headers_complete(self) -> None:
        fast_route = self.fast_route
        parser = self.parser
        if (
            fast_route is None
            or parser.should_upgrade()
            or parser.get_http_version() != "1.1"
            or (
                self.limit_concurrency is not None
                and (
                    len(self.connections) >= self.limit_concurrency
                    or len(self.tasks) >= self.limit_concurrency
                )
            )
        ):
            super().on_headers_complete()
            return
        scope = self.scope
        scope["method"] = parser.get_method().decode("ascii")
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = parsed.query or b""
        route = fast_route(scope)  # type: ignore[arg-type]
        if route is None:
            super().on_headers_complete()  # sets the same keys again, then ASGI
            return
        existing = self.cycle
        self.cycle = FastCycle(
            scope=scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(self.cycle, route)  # type: ignore[arg-type]
        else:  # pipelined: it runs when the response before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, route))  # type: ignore[arg-type]
