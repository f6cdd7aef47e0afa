"""The worker role object: heartbeats, the command consumer and this environment's apps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError

from nocosup.appcache import AppCache
from nocosup.commands import CommandConsumer, reply_stream_ttl
from nocosup.db import ensure_database
from nocosup.heartbeat import Heartbeat, Presence, StatusReporter, heartbeat_ttl
from nocosup.lastseen import LastSeenFlusher
from nocosup.metrics import apps_by_status
from nocosup.redisconn import close_role_redis, connect_role_redis
from nocosup.rediskeys import Keys
from nocosup.redislock import redis_lock
from nocosup.role import Role
from nocosup.runtime import LocalRuntime
from nocosup.signing import Signer, cluster_signer, command_window, warn_if_unsigned
from nocosup.worker import Worker

if TYPE_CHECKING:
    from nocosup.host import Host

log = logging.getLogger("nocosup.worker")


class WorkerRole(Role):
    """Registers this instance of ``ENVIRONMENT_NAME``, beats, takes commands from its
    stream and serves its apps; every status change is written to Redis by the
    :class:`StatusReporter` directly, not through a plugin hook."""

    name = "worker"
    serves_forwarded_app = True

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.redis: Redis | None = None
        self.command_redis: Redis | None = None
        self.runtime: LocalRuntime | None = None
        self.reporter: StatusReporter | None = None
        self.worker: Worker | None = None
        self.heartbeat: Heartbeat | None = None
        self.last_seen: LastSeenFlusher | None = None
        self.consumer: CommandConsumer | None = None
        self.consumer_task: asyncio.Task[None] | None = None
        self._restarter: asyncio.Task[None] | None = None
        #: Why the consumer task last died (None while it runs).
        self.consumer_death: str | None = None
        self.signer: Signer = cluster_signer(host.settings)

    async def start(self) -> None:
        host, settings = self.host, self.settings
        keys = Keys(settings.redis_prefix)
        signer = self.signer
        warn_if_unsigned(settings, log)
        if settings.db_dialect == "postgres":
            # tenant databases are created from this one: it must exist
            await ensure_database(settings)
        redis, commands = await connect_role_redis(host)
        self.redis, self.command_redis = redis, commands

        runtime = self.runtime = LocalRuntime(host)
        runtime.boot_guard = lambda name: redis_lock(
            redis, keys.lock(name), ttl=settings.lock_ttl, wait=settings.command_timeout
        )
        reporter = self.reporter = StatusReporter(
            redis, keys, settings.environment_name, settings.instance_id, signer
        )
        reporter.start()
        runtime.status_listeners.append(reporter.report)
        cache = AppCache(redis, keys, on_invalid=self._cache_invalid, signer=signer)
        worker = self.worker = Worker(runtime, cache, keys, reporter)
        self.gateway = worker

        async def republish() -> None:
            for name, tenant in runtime.tenants.items():
                reporter.report(name, tenant.status, tenant.error)

        self.heartbeat = Heartbeat(
            redis,
            keys,
            settings,
            on_reset=republish,
            signer=signer,
            databases=host.databases.describe(),
        )
        await self.heartbeat.start()
        host.spawn(runtime.upkeep())
        self.last_seen = LastSeenFlusher(runtime, redis, keys, settings.heartbeat_interval)
        host.spawn(self.last_seen.run())

        for name in await worker.restore():
            host.spawn(_start_logged(runtime, name))
        problem = await cache.problem()
        if problem is None and cache.skipped:
            problem = f"{cache.skipped} unreadable records skipped"
        if problem is not None:
            log.warning("config cache incomplete (%s): restoring again once repaired", problem)
            host.spawn(self._restore_when_repaired(worker, cache))
        self.consumer = CommandConsumer(
            commands,
            keys,
            settings.environment_name,
            settings.instance_id,
            worker.handle_command,
            Presence(redis, keys, heartbeat_ttl(settings), signer),
            signer=signer,
            window=command_window(settings),
            reply_ttl=reply_stream_ttl(settings.heartbeat_interval),
        )
        self._run_consumer()
        host.readiness["commands"] = self._consumer_ready
        # a consumer that cannot read while Redis blips is degraded, as Redis is
        host.readiness_grace["commands"] = heartbeat_ttl(settings)
        log.info(
            "worker %s of environment %s registered (%s)",
            settings.instance_id,
            settings.environment_name,
            settings.proxy_url,
        )

    def _cache_invalid(self, name: str, reason: str) -> None:
        """Tell the supervisor (a hint on ``{p}:events``) that the config cache needs it."""
        if self.redis is None:
            return
        keys, settings = Keys(self.settings.redis_prefix), self.settings
        hint = {
            "type": "cache_invalid",
            "app": name,
            "reason": reason,
            "environment": settings.environment_name,
            "instance": settings.instance_id,
        }
        self.host.spawn(_publish(self.redis, keys.events, self.signer.sign_json("event", "", hint)))

    async def _restore_when_repaired(self, worker: Worker, cache: AppCache) -> None:
        """The cache was incomplete at start: once the supervisor rebuilt it, learn (and
        boot) the apps the first restore missed."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                if await cache.problem(full=True) is None:
                    break
            except RedisError as exc:
                log.warning("cannot check the config cache yet: %r", exc)
        runtime = worker.runtime
        for name in await worker.restore(only_new=True):
            self.host.spawn(_start_logged(runtime, name))
        log.info("config cache repaired: apps restored")

    def _run_consumer(self) -> None:
        """Start the consumer's task; if it ever ends other than cancelled, start it again."""
        assert self.consumer is not None
        task = self.consumer_task = asyncio.create_task(self.consumer.run(), name="commands")
        task.add_done_callback(self._consumer_ended)

    def _consumer_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task is not self.consumer_task or self.consumer is None:
            return
        exc = task.exception()
        self.consumer_death = f"{type(exc).__name__}: {exc}" if exc else "it returned"
        log.error(
            "the command consumer died (%s); restarting it", self.consumer_death, exc_info=exc
        )
        self._restarter = asyncio.create_task(self._restart_consumer(), name="commands-restart")

    async def _restart_consumer(self) -> None:
        await asyncio.sleep(1)
        if self.consumer is not None:
            self.consumer_death = None
            self._run_consumer()

    async def _consumer_ready(self) -> None:
        """/readyz: commands are read (the consumer task runs and its last read worked)."""
        task, consumer = self.consumer_task, self.consumer
        if consumer is None or task is None or task.done():
            raise RuntimeError(f"command consumer is dead: {self.consumer_death or 'not running'}")
        if consumer.error is not None:
            raise RuntimeError(f"command consumer cannot read commands: {consumer.error}")

    async def gauges(self) -> list[Metric]:
        """Apps by status, as this process runs them."""
        runtime = self.runtime
        if runtime is None:
            return []
        return [apps_by_status(t.status.value for t in runtime.tenants.values())]

    async def stop(self) -> None:
        self.gateway = None
        self.host.readiness.pop("commands", None)
        if self._restarter is not None:
            self._restarter.cancel()
            await asyncio.gather(self._restarter, return_exceptions=True)
            self._restarter = None
        if self.consumer_task is not None:
            task, self.consumer_task = self.consumer_task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.close()
            self.consumer = None
        if self.heartbeat is not None:
            # go offline first: the supervisor stops routing here while apps shut down
            await self.heartbeat.stop()
            self.heartbeat = None
        if self.last_seen is not None:
            with contextlib.suppress(Exception):  # the last batch, best effort
                await self.last_seen.flush()
            self.last_seen = None
        if self.runtime is not None:
            await self.runtime.stop_all()
            self.runtime = None
        if self.reporter is not None:
            await self.reporter.stop()
            self.reporter = None
        await close_role_redis(self.redis, self.command_redis)
        self.redis = self.command_redis = None


async def _start_logged(runtime: LocalRuntime, name: str) -> None:
    tenant = await runtime.start(name)
    if tenant.error:
        log.error("app %s did not come back: %s", name, tenant.error)


async def _publish(redis: Redis, channel: str, message: str) -> None:
    await redis.publish(channel, message)
