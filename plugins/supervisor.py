"""The supervisor role: the registry, the admin API, and apps run here or on workers."""

from __future__ import annotations

import logging
from typing import Any

from starlette.routing import BaseRoute

from nocosup import admin_api
from nocosup.appcache import AppCache
from nocosup.auth import resolve_admin_token
from nocosup.commands import CommandSender
from nocosup.db import connect_registry
from nocosup.environments import EnvironmentDirectory, LocalEnvironments
from nocosup.heartbeat import Presence, heartbeat_ttl
from nocosup.hookspecs import hookimpl
from nocosup.host import Host
from nocosup.process import LocalProcess, ProcessAdapter
from nocosup.redisconn import close_role_redis, connect_role_redis
from nocosup.rediskeys import Keys
from nocosup.registry import EnvironmentStore, Registry
from nocosup.remote import ProxyGateway, RedisEnvironments, RemoteProcess, Watcher
from nocosup.runtime import LocalRuntime
from nocosup.supervisor import Supervisor

log = logging.getLogger("nocosup.supervisor")


@hookimpl
def register_routes(host: Host) -> list[BaseRoute]:
    return admin_api.routes()


@hookimpl(tryfirst=True)
def startup(host: Host) -> Any:
    return _startup(host)


async def _startup(host: Host) -> None:
    settings = host.settings
    host.state.admin_token = resolve_admin_token(settings)
    db = await connect_registry(settings)
    host.services["registry_db"] = db
    host.readiness["database"] = lambda: db.fetch_val("SELECT 1")
    registry = Registry(db)
    await registry.migrate()
    process: ProcessAdapter
    environments: EnvironmentDirectory
    if settings.process_adapter == "local":
        runtime = LocalRuntime(host)
        host.services["runtime"] = runtime
        host.services["gateway"] = runtime
        process = LocalProcess(runtime)
        environments = LocalEnvironments(settings)
    else:
        process, environments = await _remote(host, registry, db)
    supervisor = Supervisor(host, registry, process, environments)
    host.services["supervisor"] = supervisor
    await supervisor.restore()
    if "watcher" in host.services:
        await host.services["watcher"].start()


async def _remote(
    host: Host, registry: Registry, db: Any
) -> tuple[RemoteProcess, RedisEnvironments]:
    """Multi-environment mode: Redis for the cache and heartbeats, commands, the proxy."""
    from nocosup.proxy import Proxy

    settings = host.settings
    keys = Keys(settings.redis_prefix)
    redis, commands = await connect_role_redis(host)
    ttl = heartbeat_ttl(settings)
    sender = CommandSender(commands, keys, settings.instance_id, Presence(redis, keys, ttl))
    await sender.start()
    host.services["sender"] = sender
    environments = RedisEnvironments(host, redis, keys, EnvironmentStore(db), ttl)
    process = RemoteProcess(host, redis, keys, AppCache(redis, keys), sender, environments)
    proxy = Proxy(read_timeout=settings.proxy_timeout)
    host.services["proxy"] = proxy
    host.services["gateway"] = ProxyGateway(host, process, environments, proxy)
    host.services["watcher"] = Watcher(host, redis, keys, registry, environments, process)
    return process, environments


@hookimpl(trylast=True)
def shutdown(host: Host) -> Any:
    return _shutdown(host)


async def _shutdown(host: Host) -> None:
    services = host.services
    if "watcher" in services:
        await services.pop("watcher").close()
    if "runtime" in services:
        await services.pop("runtime").stop_all()
    if "sender" in services:
        await services.pop("sender").close()
    if "proxy" in services:
        await services.pop("proxy").aclose()
    await close_role_redis(host)
    if "registry_db" in services:
        await services.pop("registry_db").disconnect()


@hookimpl
def app_gateway(host: Host) -> Any:
    return host.services.get("gateway")
