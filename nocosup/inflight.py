"""Requests the supervisor is proxying, per environment, so that an environment going
offline (its heartbeat expired: a frozen or dead worker) answers them 503 at once
instead of after ``NOCOSUP_PROXY_TIMEOUT``.

:meth:`InFlight.serve` runs one proxied exchange; :meth:`InFlight.abort` (called by the
environment directory when an environment goes offline) cancels every exchange still
waiting on that environment. One whose response had not started gets 503
``APP_ENVIRONMENT_UNAVAILABLE`` with Retry-After; one whose response had started is cut
short (the client sees an incomplete response, as from a worker that died).
:meth:`InFlight.move` follows a request the proxy sends again to another environment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive, Scope, Send

from nocosup.errors import EnvironmentUnavailable
from nocosup.responses import send_error

log = logging.getLogger("nocosup.proxy")


class _Exchange:
    """One request in flight: its task (or the callback that aborts an exchange run by
    callbacks), whether its response began, whether aborted."""

    __slots__ = ("aborted", "env", "on_abort", "send", "started", "task")

    def __init__(
        self,
        env: str,
        task: asyncio.Task[object] | None,
        send: Send | None,
        on_abort: Callable[[], object] | None = None,
    ) -> None:
        self.env = env
        self.task = task
        self.send = send
        self.on_abort = on_abort
        self.started = False
        self.aborted = False

    async def tracked_send(self, message: Message) -> None:
        self.started = True
        assert self.send is not None
        await self.send(message)


#: Where to send an aborted request again: (environment, exchange), from a gateway.
Rescue = tuple[str, Callable[[Send], Awaitable[None]]]


class InFlight:
    """The exchanges in flight, by environment name."""

    def __init__(self) -> None:
        self._by_env: dict[str, set[_Exchange]] = {}

    def count(self, env: str) -> int:
        return len(self._by_env.get(env, ()))

    async def serve(
        self,
        env: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: Callable[[Send], Awaitable[None]],
        rescue: Callable[[], Rescue | None] | None = None,
    ) -> None:
        """Run ``exchange(send)`` for a request to ``env``, abortable by :meth:`abort`.

        When aborted before its response started, ``rescue()`` may name another
        environment and exchange to serve the request instead (once); else 503."""
        task = asyncio.current_task()
        assert task is not None
        entry = _Exchange(env, task, send)
        self._by_env.setdefault(env, set()).add(entry)
        try:
            await exchange(entry.tracked_send)
        except asyncio.CancelledError:
            if not entry.aborted:
                raise
            task.uncancel()
            again = rescue() if rescue is not None and not entry.started else None
            if again is not None:
                self._discard(entry)
                await self.serve(again[0], scope, receive, send, again[1])
            elif not entry.started:
                error = EnvironmentUnavailable(
                    f"environment {entry.env!r} went offline while serving this request"
                )
                try:
                    await send_error(scope, receive, send, error)
                except OSError:
                    pass  # the client left too
        finally:
            self._discard(entry)

    def track(self, env: str, on_abort: Callable[[], object]) -> _Exchange:
        """Count an exchange with ``env`` that runs without a task of its own (the
        supervisor's express lane): :meth:`abort` calls ``on_abort`` instead of cancelling.
        Pass the result to :meth:`untrack` when the exchange ends."""
        entry = _Exchange(env, None, None, on_abort)
        self._by_env.setdefault(env, set()).add(entry)
        return entry

    def untrack(self, entry: _Exchange) -> None:
        self._discard(entry)

    def _discard(self, entry: _Exchange) -> None:
        group = self._by_env.get(entry.env)
        if group is not None:
            group.discard(entry)
            if not group:
                del self._by_env[entry.env]

    def move(self, env: str, to: str) -> None:
        """The current task's exchange with ``env`` now waits on ``to`` (the proxy sends
        the request again there): only ``to`` going offline aborts it from now on."""
        task = asyncio.current_task()
        for entry in self._by_env.get(env, ()):
            if entry.task is task:
                self._discard(entry)
                entry.env = to
                self._by_env.setdefault(to, set()).add(entry)
                return

    def abort(self, env: str) -> int:
        """Cancel every exchange waiting on ``env``; how many there were."""
        group = self._by_env.get(env, set())
        count = len(group)
        for entry in list(group):
            if not entry.aborted:
                entry.aborted = True
                if entry.task is not None:
                    entry.task.cancel()
                elif entry.on_abort is not None:
                    entry.on_abort()
        if count:
            log.warning("environment %s went offline: %d proxied requests aborted", env, count)
        return count
