"""A per-app startup lock in Redis: ``SET NX PX`` with a token, renewed while held.

Not redis-py's ``Lock``: that one keeps its token in a thread-local shared by every task
on the loop and defaults to no timeout. Here each acquisition is its own object, the TTL
is always set, a background task renews it every third of the TTL, and release is a
compare-and-delete that survives cancellation (the TTL is the backstop). A lock lost
while held (its key expired or was taken over) aborts the work it guards: the task
inside :func:`redis_lock` is cancelled and sees :class:`LockLost` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis

log = logging.getLogger("nocosup.lock")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class LockTimeout(Exception):
    """The lock was not acquired within the wait time."""


class LockLost(Exception):
    """The lock expired or changed hands while its holder was still working."""


class RedisLock:
    """One acquisition of one key."""

    def __init__(
        self, redis: Redis, key: str, ttl: float, on_lost: Callable[[], object] | None = None
    ) -> None:
        self.redis = redis
        self.on_lost = on_lost
        self.key = key
        self.ttl_ms = max(int(ttl * 1000), 100)
        self.token = secrets.token_hex(16)
        self._renewer: asyncio.Task[None] | None = None
        self.lost = False

    async def acquire(self, wait: float) -> None:
        """Try until ``wait`` seconds have passed, backing off from 20 ms to 250 ms."""
        deadline = time.monotonic() + wait
        delay = 0.02
        while True:
            if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self._renewer = asyncio.create_task(self._renew(), name=f"renew:{self.key}")
                return
            if time.monotonic() + delay > deadline:
                raise LockTimeout(f"lock {self.key} still held after {wait:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _renew(self) -> None:
        interval = self.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception as exc:  # keep trying: the TTL still protects the key
                log.warning("could not renew %s: %r", self.key, exc)
                continue
            if not renewed:
                self.lost = True
                log.error("lock %s was lost while held: aborting the work it guards", self.key)
                if self.on_lost is not None:
                    self.on_lost()
                return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        try:
            await asyncio.shield(compare_and_delete(self.redis, self.key, self.token))
        except Exception as exc:
            log.warning("could not release %s (it expires by itself): %r", self.key, exc)


async def compare_and_delete(redis: Redis, key: str, token: str) -> bool:
    """Delete ``key`` only if it still holds ``token``: never another holder's."""
    return bool(await redis.eval(_RELEASE, 1, key, token))


@contextlib.asynccontextmanager
async def redis_lock(redis: Redis, key: str, ttl: float, wait: float) -> AsyncIterator[RedisLock]:
    """Hold ``key`` for the body; if the lock is lost meanwhile, the body is cancelled and
    :class:`LockLost` raised in its place (the way ``asyncio.timeout`` works)."""
    task = asyncio.current_task()
    assert task is not None
    lock = RedisLock(redis, key, ttl, on_lost=task.cancel)
    await lock.acquire(wait)
    try:
        yield lock
    except asyncio.CancelledError:
        if lock.lost and task.uncancel() == 0:
            raise LockLost(f"lock {key} was lost while held") from None
        raise
    finally:
        await lock.release()
