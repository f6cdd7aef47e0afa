"""The worker role object: heartbeats, the command consumer and this environment's apps."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from nocosup.appcache import AppCache
from nocosup.commands import CommandConsumer
from nocosup.db import ensure_database
from nocosup.heartbeat import Heartbeat, Presence, StatusReporter, heartbeat_ttl
from nocosup.redisconn import close_role_redis, connect_role_redis
from nocosup.rediskeys import Keys
from nocosup.redislock import redis_lock
from nocosup.role import Role
from nocosup.runtime import LocalRuntime
from nocosup.worker import Worker

if TYPE_CHECKING:
    from nocosup.host import Host

log = logging.getLogger("nocosup.worker")


class WorkerRole(Role):
    """Registers this instance of ``ENVIRONMENT_NAME``, beats, takes commands from its
    stream and serves its apps; every status change is written to Redis by the
    :class:`StatusReporter` directly, not through a plugin hook."""

    name = "worker"

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.redis: Redis | None = None
        self.command_redis: Redis | None = None
        self.runtime: LocalRuntime | None = None
        self.reporter: StatusReporter | None = None
        self.worker: Worker | None = None
        self.heartbeat: Heartbeat | None = None
        self.consumer: CommandConsumer | None = None
        self.consumer_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        host, settings = self.host, self.settings
        keys = Keys(settings.redis_prefix)
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
            redis, keys, settings.environment_name, settings.instance_id
        )
        reporter.start()
        runtime.status_listeners.append(reporter.report)
        worker = self.worker = Worker(runtime, AppCache(redis, keys), keys, reporter)
        self.gateway = worker

        async def republish() -> None:
            for name, tenant in runtime.tenants.items():
                reporter.report(name, tenant.status, tenant.error)

        self.heartbeat = Heartbeat(redis, keys, settings, on_reset=republish)
        await self.heartbeat.start()

        for name in await worker.restore():
            host.spawn(_start_logged(runtime, name))
        self.consumer = CommandConsumer(
            commands,
            keys,
            settings.environment_name,
            settings.instance_id,
            worker.handle_command,
            Presence(redis, keys, heartbeat_ttl(settings)),
        )
        self.consumer_task = asyncio.create_task(self.consumer.run(), name="commands")
        log.info(
            "worker %s of environment %s registered (%s)",
            settings.instance_id,
            settings.environment_name,
            settings.proxy_url,
        )

    async def stop(self) -> None:
        self.gateway = None
        if self.consumer_task is not None:
            self.consumer_task.cancel()
            await asyncio.gather(self.consumer_task, return_exceptions=True)
            self.consumer_task = None
        if self.consumer is not None:
            await self.consumer.close()
            self.consumer = None
        if self.heartbeat is not None:
            # go offline first: the supervisor stops routing here while apps shut down
            await self.heartbeat.stop()
            self.heartbeat = None
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
