"""The worker role: runs the apps of one environment for a remote supervisor."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nocosup.appcache import AppCache
from nocosup.commands import CommandConsumer
from nocosup.db import ensure_database
from nocosup.heartbeat import Heartbeat, Presence, StatusReporter, heartbeat_ttl
from nocosup.hookspecs import hookimpl
from nocosup.host import Host
from nocosup.redisconn import close_role_redis, connect_role_redis
from nocosup.rediskeys import Keys
from nocosup.redislock import redis_lock
from nocosup.runtime import LocalRuntime
from nocosup.worker import Worker

log = logging.getLogger("nocosup.worker")


@hookimpl(tryfirst=True)
def startup(host: Host) -> Any:
    return _startup(host)


async def _startup(host: Host) -> None:
    settings = host.settings
    keys = Keys(settings.redis_prefix)
    if settings.db_dialect == "postgres":
        # tenant databases are created from this one: it must exist
        await ensure_database(settings)
    redis, commands = await connect_role_redis(host)

    runtime = LocalRuntime(host)
    runtime.boot_guard = lambda name: redis_lock(
        redis, keys.lock(name), ttl=settings.lock_ttl, wait=settings.command_timeout
    )
    host.services["runtime"] = runtime
    reporter = StatusReporter(redis, keys, settings.environment_name, settings.instance_id)
    reporter.start()
    host.services["status_reporter"] = reporter
    worker = Worker(runtime, AppCache(redis, keys), keys, reporter)
    host.services["worker"] = worker

    async def republish() -> None:
        for name, tenant in runtime.tenants.items():
            reporter.report(name, tenant.status.value, tenant.error)

    heartbeat = Heartbeat(redis, keys, settings, on_reset=republish)
    await heartbeat.start()
    host.services["heartbeat"] = heartbeat

    for name in await worker.restore():
        host.spawn(_start_logged(runtime, name))
    consumer = CommandConsumer(
        commands,
        keys,
        settings.environment_name,
        settings.instance_id,
        worker.handle_command,
        Presence(redis, keys, heartbeat_ttl(settings)),
    )
    host.services["consumer"] = consumer
    host.services["consumer_task"] = asyncio.create_task(consumer.run(), name="commands")
    log.info(
        "worker %s of environment %s registered (%s)",
        settings.instance_id,
        settings.environment_name,
        settings.proxy_url,
    )


async def _start_logged(runtime: LocalRuntime, name: str) -> None:
    tenant = await runtime.start(name)
    if tenant.error:
        log.error("app %s did not come back: %s", name, tenant.error)


@hookimpl
def app_status_changed(
    name: str, environment: str, status: str, error: str | None, host: Host
) -> None:
    reporter: StatusReporter | None = host.services.get("status_reporter")
    if reporter is not None:
        reporter.report(name, status, error)


@hookimpl
def app_removed(name: str, environment: str, database_dropped: bool, host: Host) -> None:
    reporter: StatusReporter | None = host.services.get("status_reporter")
    if reporter is not None:
        reporter.report(name, None, None)


@hookimpl(trylast=True)
def shutdown(host: Host) -> Any:
    return _shutdown(host)


async def _shutdown(host: Host) -> None:
    services = host.services
    task: asyncio.Task[None] | None = services.pop("consumer_task", None)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await services.pop("consumer").close()
    if "heartbeat" in services:
        # go offline first: the supervisor stops routing here while apps shut down
        await services.pop("heartbeat").stop()
    if "runtime" in services:
        await services.pop("runtime").stop_all()
    if "status_reporter" in services:
        await services.pop("status_reporter").stop()
    await close_role_redis(host)


@hookimpl
def app_gateway(host: Host) -> Any:
    return host.services.get("worker")
