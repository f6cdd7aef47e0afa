"""Admission control inside one process: how many boots run at once, and how many
requests one app serves at once.

* :class:`BootAdmission` lets ``NOCOSUP_BOOT_CONCURRENCY`` boots run at a time; the rest
  wait in arrival order (so a host start with a thousand ``with_supervisor`` apps does
  not build them all at once, and a request's cold start is not stuck behind them
  forever: its wait counts against ``NOCOSUP_BOOT_WAIT``).
* :class:`RequestGate` is one app's ``options.maxConcurrency`` and ``options.maxQueue``:
  a request over the cap waits in order for a free slot, and one over the queue too is
  refused at once (503 ``APP_OVERLOADED``), so a flooded app cannot take the whole event
  loop from its neighbours. Apps without a cap have no gate: their requests pay nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nocosup.config import Settings

log = logging.getLogger("nocosup.admission")


class BootAdmission:
    """At most ``limit`` boots at a time in this process, the others in arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # asyncio.Semaphore hands slots out first come, first served
        self._slots = asyncio.Semaphore(limit)
        #: Boots running now, and waiting for a slot.
        self.active = 0
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()


class RequestGate:
    """``limit`` requests of one app in flight, ``queue`` more waiting in order."""

    __slots__ = ("_waiters", "active", "limit", "queue")

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    async def enter(self) -> bool:
        """Take a slot, waiting in line if need be; False when the line is full too."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        if self.waiting >= self.queue:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot just as the caller left: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return True  # the slot of whoever left was handed over: active is unchanged

    def leave(self) -> None:
        """Give the slot to the next in line, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


def eager_cap(settings: Settings, wanted: int, running: int = 0) -> int:
    """How many of ``wanted`` eager boots a process starts at once: all, unless that would
    pass NOCOSUP_MAX_RUNNING_APPS (each boot past it would put the one before to idle).
    The rest stay idle until their first request, and the log says so."""
    limit = settings.max_running_apps
    if not limit or running + wanted <= limit:
        return wanted
    room = max(0, limit - running)
    log.warning(
        "%d apps start with the host but NOCOSUP_MAX_RUNNING_APPS is %d: starting %d, "
        "the others boot on their first request",
        wanted,
        limit,
        room,
    )
    return room
