"""A worker's presence in Redis: registration, heartbeats and status reports.

The heartbeat is a key per worker instance with a TTL of three intervals, renewed every
interval (so two beats can be missed before the supervisor sees the instance go); a
clean shutdown deletes it, so the supervisor sees that at once. A sorted set of
last-seen times lists instances without SCAN. When a beat finds its key gone (Redis
restarted, or the worker stalled past the TTL) it re-registers and republishes the
status of every app it runs, so nothing the supervisor shows is lost with Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from nocosup import __version__
from nocosup.config import Settings
from nocosup.redisconn import raise_if_cancelled
from nocosup.rediskeys import Keys, member, split_member, valid_member
from nocosup.registry import now_iso
from nocosup.signing import MAX_SKEW, BadSignature, RateLimitedLog, Signer
from nocosup.status import AppStatus

_STATUSES = frozenset(s.value for s in AppStatus)

log = logging.getLogger("nocosup.heartbeat")
_dropped = RateLimitedLog(log)


def heartbeat_ttl(settings: Settings) -> float:
    return settings.heartbeat_interval * 3


_LIVE = """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local env, instance = string.match(m, '^(.-)/(.*)$')
  if env and (ARGV[3] == '' or env == ARGV[3]) and
     redis.call('EXISTS', ARGV[2] .. env .. ':inst:' .. instance) == 1 then
    table.insert(out, m)
  end
end
return out
"""
# The same, with each heartbeat's value after its member (to check its signature).
_LIVE_VALUES = """
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local env, instance = string.match(m, '^(.-)/(.*)$')
  if env and (ARGV[3] == '' or env == ARGV[3]) then
    local ok, value = pcall(redis.call, 'GET', ARGV[2] .. env .. ':inst:' .. instance)
    if ok and value then
      table.insert(out, m)
      table.insert(out, value)
    end
  end
end
return out
"""


async def live_instances(
    redis: Redis, keys: Keys, env: str | None, ttl: float, signer: Signer | None = None
) -> set[str]:
    """``{env}/{instance}`` of the instances whose heartbeat key exists (the truth); the
    zset only narrows the search to those seen in the last two TTLs. One round trip: it
    runs before every command. With a cluster secret (``signer``) a heartbeat counts only
    when its signature holds and it is at most a TTL old."""
    since = (time.time() - ttl * 2) * 1000
    prefix = f"{keys.prefix}:env:"
    if signer is None or not signer.enabled:
        members = await redis.eval(_LIVE, 1, keys.instances, since, prefix, env or "")
        return {m for m in members if valid_member(m)}
    flat = await redis.eval(_LIVE_VALUES, 1, keys.instances, since, prefix, env or "")
    out = set()
    for m, raw in zip(flat[::2], flat[1::2], strict=True):
        if valid_member(m) and signed_heartbeat(signer, m, raw, ttl + MAX_SKEW):
            out.add(m)
    return out


def signed_heartbeat(signer: Signer, m: str, raw: object, window: float) -> bool:
    """Whether ``raw`` is a heartbeat of instance ``m`` signed within ``window`` seconds."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
        if not isinstance(value, dict):
            raise BadSignature("not a JSON object")
        plain = signer.verify_json("heartbeat", m, value, window)
        if member(str(plain.get("environment")), str(plain.get("instance"))) != m:
            raise BadSignature("of another instance")
    except (BadSignature, ValueError) as exc:
        _dropped.warning("heartbeat", "ignoring the heartbeat of %.80s: %s", m, exc)
        return False
    return True


def status_context(app: str, field: str) -> str:
    """What a status report is signed for: one app on one ``{env}/{instance}``."""
    return f"{app}|{field}"


def parse_status(
    raw: object, signer: Signer | None = None, context: str = ""
) -> dict[str, Any] | None:
    """A status field as :class:`StatusReporter` writes it (``{"status", "error", "at"}``),
    or None when it is not one (whoever wrote it), or, with a cluster secret (``signer``),
    when it is not signed for ``context`` (:func:`status_context`): callers skip it."""
    try:
        value = json.loads(raw) if isinstance(raw, str | bytes) else None
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if signer is not None:
        try:
            # written on change only: a status may be old, so no age limit
            value = signer.verify_json("status", context, value, None)
        except BadSignature as exc:
            _dropped.warning("status", "ignoring the status %.120s: %s", context, exc)
            return None
    status, error = value.get("status"), value.get("error")
    if status not in _STATUSES or not (error is None or isinstance(error, str)):
        return None
    return {"status": status, "error": error, "at": value.get("at")}


class Presence:
    """Who is alive, read from the Redis that holds the heartbeats (which may not be the
    Redis that carries commands)."""

    def __init__(self, redis: Redis, keys: Keys, ttl: float, signer: Signer | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self.signer = signer

    async def instances(self, env: str) -> set[str]:
        """Instance ids of ``env`` that are alive now."""
        live = await live_instances(self.redis, self.keys, env, self.ttl, self.signer)
        return {split_member(m)[1] for m in live}


class Heartbeat:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        on_reset: Callable[[], Awaitable[None]],
        signer: Signer | None = None,
        databases: dict[str, Any] | None = None,
    ) -> None:
        self.signer = signer or Signer(None, settings.instance_id)
        #: Where this environment keeps app data (TenantDatabases.describe): registered so
        #: the supervisor knows which apps may move here.
        self.databases = databases
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.env = settings.environment_name
        self.instance = settings.instance_id
        self.on_reset = on_reset
        self.ttl_ms = int(heartbeat_ttl(settings) * 1000)
        self.started_at = now_iso()
        self._task: asyncio.Task[None] | None = None
        #: Why the last beat asked for the statuses to be written again.
        self.reset_reason = ""

    def env_info(self) -> dict[str, str]:
        s = self.settings
        return {
            "name": self.env,
            "url": s.environment_url or "",
            "proxy_url": s.proxy_url or "",
            "version": __version__,
            **({"databases": json.dumps(self.databases)} if self.databases else {}),
        }

    def instance_info(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "environment": self.env,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "version": __version__,
            "url": self.settings.environment_url,
            "proxy_url": self.settings.proxy_url,
            "started_at": self.started_at,
            "heartbeat_at": now_iso(),
        }

    async def beat(self) -> bool:
        """Renew the instance key; True when the statuses must be written again: the key
        had vanished (first beat, Redis reset) or the supervisor asked (``resync``)."""
        key = self.keys.instance(self.env, self.instance)
        async with self.redis.pipeline(transaction=True) as pipe:
            me = member(self.env, self.instance)
            heartbeat = self.signer.sign_json("heartbeat", me, self.instance_info())
            pipe.set(key, heartbeat, px=self.ttl_ms, get=True)
            pipe.zadd(self.keys.instances, {member(self.env, self.instance): time.time() * 1000})
            pipe.hsetnx(self.keys.env(self.env), "registered_at", now_iso())
            # redis-py types mapping with an invariant key type that no dict[str, str] matches
            # signed again with every beat: the supervisor ignores registrations gone stale
            registration = self.signer.sign("environment", self.env, self.env_info())
            pipe.hset(self.keys.env(self.env), mapping=registration)  # type: ignore[arg-type]
            pipe.sadd(self.keys.envs, self.env)
            pipe.getdel(self.keys.resync(self.env, self.instance))
            previous, *_, resync = await pipe.execute()
        if resync is not None and previous is not None:
            # the supervisor found a status of ours unreadable: write them all again
            self.reset_reason = "the supervisor found a status unreadable"
            return True
        if previous is None:
            self.reset_reason = "the heartbeat key was gone: Redis restarted?"
            await self.redis.publish(
                self.keys.events,
                self.signer.sign_json(
                    "event",
                    "",
                    {"type": "environment", "environment": self.env, "instance": self.instance},
                ),
            )
            return True
        return False

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def _run(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.beat():
                    log.warning("re-registered and republishing statuses (%s)", self.reset_reason)
                    await self.on_reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("heartbeat failed, retrying: %r", exc)
                await asyncio.sleep(min(interval / 4, 1))

    async def stop(self) -> None:
        """Stop beating and vanish at once, so the supervisor needs no TTL to notice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            # the zset entry stays: it tells when the environment was last seen
            await self.redis.delete(self.keys.instance(self.env, self.instance))
            await self.redis.publish(
                self.keys.events,
                self.signer.sign_json(
                    "event",
                    "",
                    {"type": "environment", "environment": self.env, "instance": self.instance},
                ),
            )
        except Exception as exc:
            log.warning("could not unregister (the TTL will): %r", exc)


class StatusReporter:
    """Writes this instance's app statuses to Redis in order, from one task."""

    def __init__(
        self, redis: Redis, keys: Keys, env: str, instance: str, signer: Signer | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.env = env
        self.instance = instance
        self.field = member(env, instance)
        self.signer = signer or Signer(None, instance)
        self._queue: asyncio.Queue[tuple[str, str | None, str | None]] = asyncio.Queue()
        self._pending = 0
        self._task: asyncio.Task[None] | None = None

    def report(self, app: str, status: str | None, error: str | None) -> None:
        """Queue a status (None: the app left this instance). Never blocks."""
        self._pending += 1
        self._queue.put_nowait((app, status, error))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-reporter")

    async def _run(self) -> None:
        while True:
            app, status, error = await self._queue.get()
            while True:
                try:
                    await self._write(app, status, error)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise_if_cancelled()
                    log.warning("could not report %s status, retrying: %r", app, exc)
                    await asyncio.sleep(0.5)
            self._pending -= 1
            self._queue.task_done()

    async def _write(self, app: str, status: str | None, error: str | None) -> None:
        key = self.keys.status(app)
        if status is None:
            await self.redis.hdel(key, self.field)
            return
        value = {"status": status, "error": error, "at": now_iso()}
        signed = self.signer.sign_json("status", status_context(app, self.field), value)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, self.field, signed)
            pipe.publish(
                self.keys.events,
                self.signer.sign_json(
                    "event",
                    "",
                    {
                        "type": "app_status",
                        "app": app,
                        "environment": self.env,
                        "instance": self.instance,
                        "status": status,
                        "error": error,
                    },
                ),
            )
            await pipe.execute()

    async def flush(self, timeout: float = 5) -> None:
        """Wait until every queued status is written (at once when none is queued)."""
        if self._pending == 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
