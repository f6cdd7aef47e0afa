"""When each app last served a request, carried from a worker to the supervisor.

The request path only writes a monotonic time on its tenant (no I/O). A worker sends the
times that moved since its last batch every heartbeat interval, in one pipeline: a hash
per app, ``{p}:seen:{app}``, one field per ``{env}/{instance}`` holding epoch
milliseconds. The supervisor reads them beside the statuses and shows the latest of an
environment's instances as ``last_seen_at``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis

from nocosup.redisconn import raise_if_cancelled
from nocosup.rediskeys import Keys, member, split_member, valid_member
from nocosup.registry import iso_time
from nocosup.runtime import LocalRuntime

log = logging.getLogger("nocosup.lastseen")
#: Latest time accepted from Redis: a minute ahead of this clock (skew, not nonsense).
_FUTURE_MS = 60_000


class LastSeenFlusher:
    """Writes this instance's last-seen times to Redis in batches."""

    def __init__(self, runtime: LocalRuntime, redis: Redis, keys: Keys, interval: float) -> None:
        self.runtime = runtime
        self.redis = redis
        self.keys = keys
        self.interval = interval
        self.field = member(runtime.environment, runtime.settings.instance_id)
        #: What was last written, per app (epoch ms).
        self._sent: dict[str, int] = {}

    def changes(self) -> dict[str, int]:
        """Epoch ms of the apps whose last traffic moved since the last batch."""
        out: dict[str, int] = {}
        for name, tenant in self.runtime.tenants.items():
            seen = self.runtime.last_seen(tenant)
            if seen is None:
                continue
            ms = int(seen * 1000)
            # an app in flight reads "now" each time: at most one write per interval
            if self._sent.get(name, 0) < ms:
                out[name] = ms
        return out

    async def flush(self) -> int:
        """Write one batch; the number of apps written."""
        batch = self.changes()
        if not batch:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, ms in batch.items():
                pipe.hset(self.keys.seen(name), self.field, str(ms))
            await pipe.execute()
        self._sent.update(batch)
        for name in list(self._sent):
            if name not in self.runtime.tenants:
                del self._sent[name]
        return len(batch)

    async def run(self) -> None:
        """Flush every interval for as long as the worker runs; Redis errors are retried."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("could not write last-seen times, retrying: %r", exc)


def latest_by_environment(fields: Any) -> dict[str, str]:
    """``{env: ISO time}`` from one app's ``{p}:seen:{app}`` hash (as HGETALL answers):
    the latest of each environment's instances. Fields that are not a valid member with
    a sane time are skipped (a worker wrote them, or anyone with Redis access)."""
    if not isinstance(fields, dict):
        return {}
    limit = time.time() * 1000 + _FUTURE_MS
    best: dict[str, int] = {}
    for key, raw in fields.items():
        if not valid_member(key) or not isinstance(raw, str | bytes):
            continue
        try:
            ms = int(raw)
        except ValueError:
            continue
        if not 0 < ms <= limit:
            continue
        env = split_member(str(key))[0]
        if ms > best.get(env, 0):
            best[env] = ms
    return {env: iso_time(ms / 1000) for env, ms in best.items()}
