"""A pure ASGI reverse proxy from the supervisor to the worker environment running an app.

Create one :class:`Proxy` in a lifespan, share it, call :meth:`Proxy.forward` with the
environment's base URL, and :meth:`Proxy.aclose` on shutdown. It is plain ASGI on
purpose: Starlette's ``StreamingResponse`` skips its background task when the client
disconnects, so a proxy built on it leaks pooled connections until the pool times out.
Here the proxy owns the upstream response and closes it in ``finally``.

What it does to a request: streams bodies both ways (a request body is forwarded only
when the client announced one with Content-Length or Transfer-Encoding), strips the
RFC 9110 hop-by-hop headers both ways (``Connection`` and what it names, Keep-Alive,
Proxy-Authenticate, Proxy-Authorization, TE, Trailer, Transfer-Encoding, Upgrade), adds
``X-Forwarded-For/-Proto/-Host/-Prefix``, drops the upstream's ``Date``/``Server`` (the
front server adds its own) and keeps no cookies. WebSockets go through the ``websockets``
client. It only ever connects to the ``upstream`` it is given, never to a host named by
the request.

Failures answer JSON through :func:`nocosup.responses.send_error`: no connection
-> 502 ``UPSTREAM_CONNECT_ERROR``, a timeout -> 504 ``UPSTREAM_TIMEOUT``. A client that
goes away is not an error: the upstream exchange is dropped quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from nocosup.domains import APP_HEADER, ROUTED_APP
from nocosup.errors import (
    NocosupError,
    UpstreamInvalidResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nocosup.forwarded import PEER
from nocosup.proxy_client import (
    Body,
    Headers,
    LeanClient,
    ProxyClient,
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
    gathered,
    never_answered,
)
from nocosup.responses import close_reason, deny_websocket, send_error

__all__ = ["Proxy"]

log = logging.getLogger("nocosup.proxy")

#: RFC 9110 section 7.6.1 hop-by-hop headers (plus the non-standard Proxy-Connection).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the proxy drops or sets itself.
_REQUEST_DROP = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"x-forwarded-proto",
    APP_HEADER,
}
_WS_HANDSHAKE = frozenset(
    {
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-key",
        b"sec-websocket-protocol",
        b"sec-websocket-version",
    }
)
_RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}
_WS_RESPONSE_DROP = _RESPONSE_DROP | _WS_HANDSHAKE | {b"content-length"}

_NO_BODY, _LENGTH, _CHUNKED = 0, 1, 2
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class _ClientGone(Exception):
    """The downstream client disconnected while its request body was being forwarded."""


class Proxy:
    """Forwards HTTP and WebSocket scopes to an upstream base URL.

    :param client: the HTTP client (default: a :class:`~nocosup.proxy_client.LeanClient`
        built from the arguments below, which are then ignored if a client is given).
    :param connect_timeout: seconds to open an upstream connection (also the WebSocket
        handshake timeout).
    :param read_timeout: seconds to wait for the response head and between body chunks;
        ``None`` for endless streams.
    :param write_timeout: seconds a request-body write may wait for the upstream.
    :param pool_timeout: seconds to wait for a free connection to a busy upstream.
    :param max_connections: connections per upstream.
    :param keepalive_expiry: seconds an idle upstream connection may be reused.
    :param ws_max_size: largest WebSocket message accepted from the upstream.
    """

    def __init__(
        self,
        client: ProxyClient | None = None,
        *,
        connect_timeout: float | None = 5.0,
        read_timeout: float | None = 60.0,
        write_timeout: float | None = 60.0,
        pool_timeout: float | None = 10.0,
        max_connections: int = 100,
        keepalive_expiry: float = 4.0,
        ws_max_size: int | None = 16 * 1024 * 1024,
    ) -> None:
        self.client: ProxyClient = client or LeanClient(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            pool_timeout=pool_timeout,
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
        )
        self.connect_timeout = connect_timeout
        self.ws_max_size = ws_max_size
        self._upstreams: dict[str, Upstream] = {}

    async def __aenter__(self) -> Proxy:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled upstream connections."""
        await self.client.aclose()

    async def forward(
        self,
        upstream: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        refused: Callable[[], NocosupError] | None = None,
        fallback: Callable[[], str | None] | None = None,
    ) -> None:
        """Answer ``scope`` with what ``upstream`` + ``scope["path"]`` (+ query) answers.

        ``upstream`` is a base URL such as ``http://127.0.0.1:9001``; the caller vouches
        for it. ``scope["root_path"]`` becomes ``X-Forwarded-Prefix``. ``refused`` makes
        the answer when the upstream refused the connection or dropped it unread (502
        ``UPSTREAM_CONNECT_ERROR`` without it): a gateway that knows the upstream is one
        of its environments answers 503 with Retry-After, as for one shutting down.

        ``fallback`` gives another base URL to try once when the upstream never took
        the request (it refused the connection, dropped it unread, or answered 503
        ``SHUTTING_DOWN`` from its drain) and the request can be replayed: it has no body
        or its body was read whole before sending, and nothing was sent to the client
        yet. It returns None when there is no other upstream. WebSockets never fall back.
        """
        target = self._upstream(upstream)
        if scope["type"] == "websocket":
            await self._websocket(target, scope, receive, send, refused)
        else:
            await self._http(target, scope, receive, send, refused, fallback)

    def upstream(self, url: str) -> Upstream:
        """``url`` parsed (cached: environments are few)."""
        return self._upstream(url)

    def _upstream(self, url: str) -> Upstream:
        upstream = self._upstreams.get(url)
        if upstream is None:
            if len(self._upstreams) >= 1024:
                self._upstreams.clear()
            upstream = self._upstreams[url] = Upstream.parse(url)
        return upstream

    # ---------------------------------------------------------------------- HTTP

    async def _http(
        self,
        upstream: Upstream,
        scope: Scope,
        receive: Receive,
        send: Send,
        refused: Callable[[], NocosupError] | None = None,
        fallback: Callable[[], str | None] | None = None,
    ) -> None:
        headers, mode = request_headers(scope, upstream)
        body: Body = None
        stream: AsyncGenerator[bytes, None] | None = None
        if mode != _NO_BODY:
            message = await receive()
            if message["type"] != "http.request":
                return  # gone before sending its body
            chunk: bytes = message.get("body", b"")
            if message.get("more_body", False):
                body = stream = _request_body(chunk, receive)
                if mode == _CHUNKED:
                    headers.append((b"transfer-encoding", b"chunked"))
                else:
                    headers.append((b"content-length", _content_length(scope)))
            else:
                body = chunk
                headers.append((b"content-length", str(len(chunk)).encode()))
        while True:
            try:
                response = await self.client.request(
                    scope["method"], upstream, path_target(scope), headers, body
                )
            except _ClientGone:
                return
            except UpstreamError as exc:
                if not never_answered(exc):
                    await answer_error(scope, receive, send, upstream_error(upstream, exc))
                    return
                if fallback is not None and stream is None:
                    retry, fallback = fallback(), None  # once only
                    if retry is not None:
                        upstream = self._upstream(retry)
                        headers = _replay_headers(scope, upstream, body)
                        continue
                error = refused() if refused is not None else None
                await answer_error(scope, receive, send, error or upstream_error(upstream, exc))
                return
            finally:
                if stream is not None:
                    await stream.aclose()
            first = response.take()
            if response.status == 503 and fallback is not None and stream is None:
                retry, fallback = _after_drain(response, first, fallback), None
                if retry is not None:
                    await response.aclose()
                    upstream = self._upstream(retry)
                    headers = _replay_headers(scope, upstream, body)
                    continue
            break
        try:
            await self._respond(response, first, scope, receive, send)
        finally:
            await response.aclose()

    async def _respond(
        self, response: UpstreamResponse, first: bytes, scope: Scope, receive: Receive, send: Send
    ) -> None:
        start = {
            "type": "http.response.start",
            "status": response.status,
            "headers": response_headers(response.headers),
        }
        if not response.at_eof and gathered(response.headers):
            first, failed = await _gather(response, first)
            if failed is not None:  # cut short: the head and what came, then the end
                log.warning("upstream failed mid-response for %s: %s", scope["path"], failed)
                with contextlib.suppress(OSError):
                    await send(start)
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                return
        if response.at_eof:  # the usual small answer: complete already
            try:
                await send(start)
                await send({"type": "http.response.body", "body": first})
            except OSError:
                pass  # the client went away (servers on ASGI spec 2.4 raise)
            return
        # The body is still arriving: watch for the client leaving, which stops the copy
        # (uvicorn's send() just returns once the client is gone).
        watcher = asyncio.ensure_future(_abort_on_disconnect(receive, response))
        try:
            await send(start)
            # even empty: a server that holds the head for the first body part (the fast
            # path, nocosup.fastpath) writes it now
            await send({"type": "http.response.body", "body": first, "more_body": True})
            while True:
                chunk = await response.read()
                if not chunk:
                    await send({"type": "http.response.body", "body": b""})
                    return
                if response.at_eof:
                    await send({"type": "http.response.body", "body": chunk})
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            return
        except UpstreamError as exc:
            if not (watcher.done() and not watcher.cancelled()):
                # Too late for an error answer: leave the response incomplete so the
                # server drops the connection and the client sees a truncated body.
                log.warning("upstream failed mid-response for %s: %s", scope["path"], exc)
            return
        finally:
            watcher.cancel()

    # ----------------------------------------------------------------- WebSocket

    async def _websocket(
        self,
        upstream: Upstream,
        scope: Scope,
        receive: Receive,
        send: Send,
        refused: Callable[[], NocosupError] | None = None,
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        scheme = "wss" if upstream.scheme == "https" else "ws"
        url = (
            f"{scheme}://{upstream.host_header.decode()}{upstream.base_path.decode()}"
            f"{path_target(scope).decode('latin-1')}"
        )
        headers, _ = request_headers(scope, upstream)
        extra = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in headers
            if name not in _WS_HANDSHAKE and name != b"host"
        ]
        try:
            ws = await ws_connect(
                url,
                subprotocols=scope.get("subprotocols") or None,
                additional_headers=extra,
                user_agent_header=None,
                compression=None,
                proxy=None,
                open_timeout=self.connect_timeout,
                close_timeout=5,
                max_size=self.ws_max_size,
            )
        except InvalidStatus as exc:
            await _relay_ws_denial(exc, scope, send)
            return
        except TimeoutError:
            await answer_error(
                scope, receive, send, UpstreamTimeout(f"WebSocket handshake with {url} timed out")
            )
            return
        except (OSError, InvalidHandshake) as exc:
            error: NocosupError = UpstreamUnreachable(f"WebSocket to {url} failed: {exc}")
            if refused is not None and isinstance(exc, ConnectionRefusedError):
                error = refused()
            await answer_error(scope, receive, send, error)
            return
        try:
            handshake = ws.response
            assert handshake is not None  # set once connect() returned
            accept_headers = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in handshake.headers.raw_items()
                if name.lower().encode("latin-1") not in _WS_RESPONSE_DROP
            ]
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": ws.subprotocol,
                    "headers": accept_headers,
                }
            )
            await _pump(ws, receive, send)
        except OSError:
            pass  # the client left during the handshake
        finally:
            if ws.transport is not None and not ws.transport.is_closing():
                ws.transport.abort()


def request_headers(scope: Scope, upstream: Upstream) -> tuple[Headers, int]:
    """The headers to send upstream (without the body framing) and how the body comes."""
    out: Headers = []
    host = b""
    forwarded_for = b""
    connection = b""
    mode = _NO_BODY
    for name, value in scope["headers"]:
        if name in _REQUEST_DROP:
            if name == b"host":
                host = value
            elif name == b"content-length":
                if mode == _NO_BODY:
                    mode = _LENGTH
            elif name == b"transfer-encoding":
                mode = _CHUNKED  # it wins over Content-Length; never send both
            elif name == b"x-forwarded-for":
                forwarded_for = forwarded_for + b", " + value if forwarded_for else value
            elif name == b"connection":
                connection = connection + b"," + value if connection else value
            continue
        out.append((name, value))
    if connection:
        named = {token.strip().lower() for token in connection.split(b",")}
        out = [item for item in out if item[0] not in named]
    out.append((b"host", upstream.host_header))
    # The host kept X-Forwarded-For only from a trusted proxy (nocosup.forwarded); this
    # hop appends the address it got the request from, as every proxy does.
    client = scope.get("client")
    peer: str | None = scope.get(PEER)
    if peer is not None:
        ip = peer.encode("latin-1")
        forwarded_for = forwarded_for + b", " + ip if forwarded_for else ip
    elif client:
        ip = client[0].encode("latin-1")
        if not forwarded_for:
            forwarded_for = ip
        elif forwarded_for.rpartition(b",")[2].strip() != ip:
            # Not already the last hop; when it is, an outer server that embeds the host
            # resolved ``client`` from a trusted X-Forwarded-For without removing it.
            forwarded_for += b", " + ip
    if forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    scheme = scope.get("scheme", "http")
    out.append((b"x-forwarded-proto", b"https" if scheme in ("https", "wss") else b"http"))
    if host:
        out.append((b"x-forwarded-host", host))
    prefix = scope.get("root_path", "")
    if prefix:
        out.append((b"x-forwarded-prefix", prefix.encode("utf-8")))
    routed: str | None = scope.get(ROUTED_APP)
    if routed is not None:  # routed by custom domain: the path does not name the app
        out.append((APP_HEADER, routed.encode("latin-1")))
    return out, mode


def response_headers(headers: Headers) -> Headers:
    """The upstream's response headers minus hop-by-hop ones and ``Date``/``Server``."""
    out: Headers = []
    connection = b""
    chunked = False
    for name, value in headers:
        if name in _RESPONSE_DROP:
            if name == b"connection":
                connection = connection + b"," + value if connection else value
            elif name == b"transfer-encoding":
                chunked = True
            continue
        out.append((name, value))
    if connection or chunked:
        named = {token.strip().lower() for token in connection.split(b",")} if connection else set()
        if chunked:
            named.add(b"content-length")  # the length of a chunked body is not its length
        out = [item for item in out if item[0] not in named]
    return out


def path_target(scope: Scope) -> bytes:
    """The request target: the path as received when it matches ``scope["path"]``, else
    the path re-encoded, plus the query string."""
    path: str = scope["path"]
    raw: bytes | None = scope.get("raw_path")
    target = b""
    if raw:
        text = raw.decode("latin-1")
        if text == path or ("%" in text and unquote(text) == path):
            target = raw
    if not target:
        target = quote(path, safe=_PATH_SAFE).encode("ascii")
    query: bytes = scope.get("query_string", b"")
    return target + b"?" + query if query else target


def _replay_headers(scope: Scope, upstream: Upstream, body: Body) -> Headers:
    """The headers for sending the request again to another upstream (its body, if any,
    is the bytes read whole)."""
    headers, _ = request_headers(scope, upstream)
    if isinstance(body, bytes):
        headers.append((b"content-length", str(len(body)).encode()))
    return headers


def _after_drain(
    response: UpstreamResponse, first: bytes, fallback: Callable[[], str | None]
) -> str | None:
    """Where to send the request again when ``response`` (a 503) is a nocosup host's
    ``SHUTTING_DOWN``: the upstream is draining and never ran the request."""
    if not response.at_eof or b'"SHUTTING_DOWN"' not in first:
        return None
    try:
        code = json.loads(first)["error"]["code"]
    except (ValueError, TypeError, KeyError):
        return None
    return fallback() if code == "SHUTTING_DOWN" else None


def _content_length(scope: Scope) -> bytes:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"content-length":
            return value
    raise AssertionError("no content-length")  # pragma: no cover - mode said there was one


async def _request_body(first: bytes, receive: Receive) -> AsyncGenerator[bytes, None]:
    """The client's body as it arrives; raises :class:`_ClientGone` if the client leaves."""
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _gather(response: UpstreamResponse, first: bytes) -> tuple[bytes, UpstreamError | None]:
    """``first`` and the rest of a small body (:func:`nocosup.proxy_client.gathered`), read
    to its end before anything is written; with the error that cut it short, if any."""
    parts = [first]
    try:
        while not response.at_eof:
            chunk = await response.read()
            if not chunk:
                break
            parts.append(chunk)
    except UpstreamError as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


async def _abort_on_disconnect(receive: Receive, response: UpstreamResponse) -> None:
    """Drop the upstream exchange as soon as the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            response.abort()
            return


def upstream_error(upstream: Upstream, exc: UpstreamError) -> NocosupError:
    """The error a client gets for ``exc`` met on ``upstream`` (502, 504, ...)."""
    if isinstance(exc, UpstreamTimeoutError):
        return UpstreamTimeout(f"upstream {upstream.url} timed out: {exc}", phase=exc.phase)
    if isinstance(exc, UpstreamConnectError):
        return UpstreamUnreachable(str(exc))
    return UpstreamInvalidResponse(f"upstream {upstream.url} answered badly: {exc}")


async def answer_error(scope: Scope, receive: Receive, send: Send, exc: NocosupError) -> None:
    log.warning("%s %s: %s", exc.code, scope["path"], exc.message)
    try:
        await send_error(scope, receive, send, exc)
    except OSError:
        pass


async def _relay_ws_denial(exc: InvalidStatus, scope: Scope, send: Send) -> None:
    """The upstream refused the WebSocket with an HTTP answer: pass it on (minus hop-by-hop
    and handshake headers) when the server can send one, else close with the matching code."""
    answer = exc.response
    try:
        await deny_websocket(
            scope,
            send,
            answer.status_code,
            answer.headers.raw_items(),
            bytes(answer.body or b""),
            drop=_WS_RESPONSE_DROP,
        )
    except OSError:
        pass


def close_code(code: int | None) -> int:
    """A close code that may be sent on the wire: 1005/1006/1015 (and anything else not
    sendable) become 1011."""
    if code is not None and (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code < 5000):
        return code
    return 1011


async def _pump(ws: ClientConnection, receive: Receive, send: Send) -> None:
    """Copy messages both ways until one side closes, then close the other with its code."""
    to_upstream = asyncio.ensure_future(_client_to_upstream(receive, ws))
    to_client = asyncio.ensure_future(_upstream_to_client(ws, send))
    try:
        await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
        if to_upstream.done() and to_upstream.result() is not None:
            code, reason = to_upstream.result()  # type: ignore[misc]
            to_client.cancel()
            await ws.close(close_code(code), close_reason(reason))
            return
        client_there = await to_client
        to_upstream.cancel()
        if client_there:
            code, reason = ws.close_code, ws.close_reason
            sent = ws.protocol.close_sent
            if sent is not None and sent.code == 1009:
                # we closed the upstream: its message was over ws_max_size; say so
                code, reason = sent.code, sent.reason
            await send(
                {
                    "type": "websocket.close",
                    "code": close_code(code),
                    "reason": close_reason(reason),
                }
            )
        else:
            await ws.close(1011, "client connection lost")
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        await asyncio.gather(to_upstream, to_client, return_exceptions=True)


async def _client_to_upstream(receive: Receive, ws: ClientConnection) -> tuple[int, str] | None:
    """Returns the client's close code and reason, or None when the upstream closed first."""
    while True:
        message: Message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            data: Any = text if text is not None else message.get("bytes") or b""
            try:
                await ws.send(data)
            except ConnectionClosed:
                return None
        elif kind == "websocket.disconnect":
            return message.get("code", 1005), message.get("reason") or ""


async def _upstream_to_client(ws: ClientConnection, send: Send) -> bool:
    """Copies until the upstream closes; False if the client went away first."""
    try:
        async for data in ws:
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})
    except ConnectionClosed:
        pass
    except OSError:
        return False
    return True
