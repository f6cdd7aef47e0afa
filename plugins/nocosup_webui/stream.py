"""Server-sent events: the host's event bus forwarded to a page, one HTTP response each.

A stream ends cleanly when the client goes away, and when the host shuts down. The second
needs care under uvicorn: on SIGTERM it first waits for open connections to finish and only
then runs the lifespan shutdown, so a stream that waited for the ``shutdown`` hook would
hold the process until ``timeout_graceful_shutdown`` and be cancelled. :class:`EventStreams`
therefore also listens to the exit signals the server captured (chaining to its handler,
the way sse-starlette does) and closes every stream as soon as the server starts to exit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from nocosup.events import EventBus

log = logging.getLogger("nocosup.webui")

#: Seconds between comment lines on an idle stream (proxies drop silent connections).
KEEPALIVE = 15.0
#: Milliseconds the browser waits before it reconnects a dropped stream.
RETRY_MS = 2000
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The :class:`EventStreams` of each running host (a host is gone, its entry is too).
STREAMS: weakref.WeakKeyDictionary[object, EventStreams] = weakref.WeakKeyDictionary()

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # nginx buffers responses unless told not to; a buffered stream is not live.
    (b"x-accel-buffering", b"no"),
]

SignalHandler = Callable[[int, FrameType | None], Any]


def encode(event: dict[str, Any]) -> bytes:
    """One SSE message: ``event: <type>`` and the event as one line of JSON."""
    kind = str(event.get("type") or "message").replace("\n", " ").replace("\r", " ")
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


class EventStreams:
    """The live streams of one running host and the switch that ends them all."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self._restore_signals: Callable[[], None] = lambda: None

    @classmethod
    def open(cls) -> EventStreams:
        """Create the set for a starting host; must run on the host's event loop."""
        streams = cls()
        streams._restore_signals = _chain_exit_signals(
            asyncio.get_running_loop(), streams.closing.set
        )
        return streams

    def close(self) -> None:
        """End every stream (idempotent) and give the exit signals back."""
        self.closing.set()
        self._restore_signals()
        self._restore_signals = lambda: None

    async def serve(self, bus: EventBus, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream ``bus`` as an HTTP response until the client leaves or the host closes."""
        async with bus.subscribe() as queue:
            # Subscribed before the headers go out: a page that refetches its state when
            # the stream opens misses nothing published after that.
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            if not await _send(send, f"retry: {RETRY_MS}\n: connected\n\n".encode()):
                return
            client_left = False
            async with anyio.create_task_group() as tg:

                async def watch_client() -> None:
                    nonlocal client_left
                    await _until_disconnect(receive)
                    client_left = True
                    tg.cancel_scope.cancel()

                async def watch_host() -> None:
                    await self.closing.wait()
                    tg.cancel_scope.cancel()

                async def pump() -> None:
                    nonlocal client_left
                    while True:
                        event: dict[str, Any] | None = None
                        # Only the wait is bounded: a send is never cut in half.
                        with anyio.move_on_after(KEEPALIVE):
                            event = await queue.get()
                        chunk = encode(event) if event is not None else b": keep-alive\n\n"
                        if not await _send(send, chunk):
                            client_left = True
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch_client)
                tg.start_soon(watch_host)
                tg.start_soon(pump)
            if not client_left:
                # The host is going away: say so, then end the response properly so the
                # browser reconnects (after RETRY_MS) instead of reporting a broken stream.
                await _send(send, encode({"type": "shutdown"}))
                await _send(send, b"", more=False)


async def _send(send: Send, body: bytes, more: bool = True) -> bool:
    """Send a body chunk; False when the client is gone (servers raise OSError then)."""
    message: Message = {"type": "http.response.body", "body": body, "more_body": more}
    try:
        await send(message)
    except OSError:
        return False
    return True


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _chain_exit_signals(
    loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]
) -> Callable[[], None]:
    """Call ``on_exit`` on the loop when SIGINT/SIGTERM arrive, then the server's handler.

    Only chains where a server installed a Python handler of its own (uvicorn does while it
    runs); default handlers are left alone. Returns a function that undoes the chaining.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed: dict[int, tuple[SignalHandler, SignalHandler]] = {}
    for sig in EXIT_SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue

        def handler(
            signum: int, frame: FrameType | None, previous: SignalHandler = previous
        ) -> None:
            loop.call_soon_threadsafe(on_exit)
            previous(signum, frame)

        signal.signal(sig, handler)
        installed[sig] = (handler, previous)

    def restore() -> None:
        for sig, (handler, previous) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)

    return restore
