"""Run any ASGI app's lifespan protocol by hand.

Mounted apps get no lifespan events from the server, so the runtime enters each tenant's
lifespan itself on start and leaves it on stop, the way uvicorn's ``--lifespan auto`` does:
an app that raises before answering the first message is taken not to support lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message

log = logging.getLogger("nocosup.lifespan")


class LifespanError(Exception):
    """The app answered ``lifespan.startup.failed`` or ``lifespan.shutdown.failed``."""


class LifespanRunner:
    """Drives one app's lifespan: ``await startup()`` then, later, ``await shutdown()``."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name
        self.state: dict[str, Any] = {}
        self.supported = True
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._answered = False

    async def startup(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.create_task(self._run(scope), name=f"lifespan:{self.name}")
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._next()
        if message["type"] == "lifespan.startup.failed":
            await self._reap()
            raise LifespanError(_last_line(message.get("message")) or "lifespan startup failed")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        message = await self._next()
        await self._reap()
        if message["type"] == "lifespan.shutdown.failed":
            raise LifespanError(_last_line(message.get("message")) or "lifespan shutdown failed")

    async def abort(self) -> None:
        """End a lifespan whose startup was interrupted (its boot was cancelled)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _reap(self) -> None:
        """Let the lifespan task end and consume its exception (it was reported already)."""
        assert self._task is not None
        done, _ = await asyncio.wait({self._task}, timeout=5)
        if done and not self._task.cancelled():
            self._task.exception()
        else:
            self._task.cancel()

    async def _next(self) -> Message:
        """The app's next answer, or a synthetic one if it returned or raised instead."""
        assert self._task is not None
        getter = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            self._answered = True
            return getter.result()
        getter.cancel()
        exc = self._task.exception()
        if not self._answered:
            # Raised or returned before answering anything: lifespan is unsupported.
            self.supported = False
            if exc is not None:
                log.debug("app %s does not support lifespan: %r", self.name, exc)
            return {"type": "lifespan.startup.complete"}
        if exc is not None:
            return {"type": "lifespan.shutdown.failed", "message": repr(exc)}
        return {"type": "lifespan.shutdown.complete"}

    async def _run(self, scope: dict[str, Any]) -> None:
        await self.app(scope, self._inbox.get, self._outbox.put)


def _last_line(message: str | None) -> str:
    """Starlette puts a whole traceback in the failure message; its last line says what."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""
