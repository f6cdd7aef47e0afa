"""The supervisor role object: what a supervisor process opens, serves and closes."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from databases import Database
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis
from starlette.routing import BaseRoute

from nocosup import admin_api
from nocosup.appcache import AppCache
from nocosup.auth import LoginLimiter, resolve_admin_token
from nocosup.commands import CommandSender, reply_stream_ttl
from nocosup.db import connect_registry
from nocosup.environments import EnvironmentDirectory, LocalEnvironments
from nocosup.fastpath import LANES
from nocosup.heartbeat import Presence, heartbeat_ttl
from nocosup.idempotency import IdempotencyStore, pending_lease
from nocosup.metrics import apps_by_status
from nocosup.plugins import await_me_maybe
from nocosup.process import LocalProcess, ProcessAdapter
from nocosup.proxy import Proxy
from nocosup.redisconn import close_role_redis, connect_role_redis
from nocosup.rediskeys import Keys
from nocosup.registry import EnvironmentStore, Registry
from nocosup.remote import ProxyGateway, RedisEnvironments, RemoteProcess, Watcher
from nocosup.replicas import Replicas
from nocosup.role import Role
from nocosup.runtime import LocalRuntime
from nocosup.sessions import SessionStore
from nocosup.signing import cluster_signer, command_window, warn_if_unsigned
from nocosup.supervisor import Supervisor, env_statuses

if TYPE_CHECKING:
    from nocosup.host import Host

log = logging.getLogger("nocosup.supervisor")


class SupervisorRole(Role):
    """The registry and the admin API; apps run in this process (``APP_PROCESS_ADAPTER=
    local``) or on workers driven through Redis, with tenant traffic proxied to them."""

    name = "supervisor"

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.registry_db: Database | None = None
        self.registry: Registry | None = None
        self.supervisor: Supervisor | None = None
        #: Kept answers of admin writes sent with an Idempotency-Key.
        self.idempotency: IdempotencyStore | None = None
        #: Shared-memory mode: the apps of this process.
        self.runtime: LocalRuntime | None = None
        #: Multi-environment mode: Redis, commands, the proxy and the background watcher.
        self.redis: Redis | None = None
        self.command_redis: Redis | None = None
        self.sender: CommandSender | None = None
        self.proxy: Proxy | None = None
        self.watcher: Watcher | None = None
        self.replicas: Replicas | None = None

    def routes(self) -> list[BaseRoute]:
        return admin_api.routes()

    async def start(self) -> None:
        host, settings = self.host, self.settings
        host.state.admin_token = resolve_admin_token(settings)
        db = self.registry_db = await connect_registry(settings)
        host.readiness["database"] = lambda: db.fetch_val("SELECT 1")
        registry = self.registry = Registry(db)
        await registry.migrate()
        host.state.sessions = SessionStore(db, host.state.admin_token, settings.session_ttl)
        host.state.login_limiter = LoginLimiter(settings.login_failures)
        self.idempotency = IdempotencyStore(db, pending_lease(settings))
        process: ProcessAdapter
        environments: EnvironmentDirectory
        if settings.process_adapter == "local":
            runtime = self.runtime = LocalRuntime(host)
            self.gateway = runtime
            host.spawn(runtime.upkeep())
            process = LocalProcess(runtime)
            environments = LocalEnvironments(settings)
        else:
            process, environments = await self._remote(registry, db)
        self.supervisor = Supervisor(host, registry, process, environments)
        self.supervisor.replicas = self.replicas
        await self.supervisor.restore()
        if self.replicas is not None:
            await self.replicas.check()  # learn the stamp the table now matches
        if self.watcher is not None:
            self.watcher.supervisor = self.supervisor
            await self.watcher.start()

    async def _remote(
        self, registry: Registry, db: Database
    ) -> tuple[RemoteProcess, RedisEnvironments]:
        """Multi-environment mode: Redis for the cache and heartbeats, commands, the proxy."""
        host, settings = self.host, self.settings
        keys = Keys(settings.redis_prefix)
        redis, commands = await connect_role_redis(host)
        self.redis, self.command_redis = redis, commands
        ttl = heartbeat_ttl(settings)
        signer = cluster_signer(settings)
        warn_if_unsigned(settings, log)
        if not settings.allowed_upstreams:
            log.warning(
                "NOCOSUP_ALLOWED_UPSTREAMS is not set: the proxy follows any URL an "
                "environment registers"
            )
        self.sender = CommandSender(
            commands,
            keys,
            settings.instance_id,
            Presence(redis, keys, ttl, signer),
            signer=signer,
            window=command_window(settings),
            reply_ttl=reply_stream_ttl(settings.heartbeat_interval),
        )
        await self.sender.start()
        environments = RedisEnvironments(
            host, redis, keys, EnvironmentStore(db), ttl, commands=commands, signer=signer
        )
        cache = AppCache(redis, keys, signer=signer)
        process = RemoteProcess(host, redis, keys, cache, self.sender, environments)
        self.proxy = Proxy(read_timeout=settings.proxy_timeout, ws_max_size=settings.max_ws_message)
        self.gateway = ProxyGateway(host, process, environments, self.proxy)
        self.serves_while_draining = True  # it only proxies: see Role
        self.watcher = Watcher(host, redis, keys, registry, environments, process)
        self.replicas = self.watcher.replicas = Replicas(
            host, registry, process, self.watcher.period
        )
        return process, environments

    async def gauges(self) -> list[Metric]:
        """Apps by status (every app, every environment of it) and, in multi-environment
        mode, each environment's heartbeat age and live instances."""
        supervisor = self.supervisor
        if supervisor is None or self.registry is None:
            return []
        records = await self.registry.list()
        statuses = await await_me_maybe(supervisor.process.statuses(records))
        families: list[Metric] = [
            apps_by_status(
                status
                for record in records
                for status in env_statuses(record, statuses.get(record.name, {})).values()
            )
        ]
        if self.watcher is None:
            return families
        age = GaugeMetricFamily(
            "nocosup_environment_heartbeat_age_seconds",
            "Seconds since the environment's last heartbeat (as the supervisor reads it).",
            labels=["environment"],
        )
        instances = GaugeMetricFamily(
            "nocosup_environment_instances",
            "Live worker processes of the environment.",
            labels=["environment"],
        )
        fast = CounterMetricFamily(
            "nocosup_proxy_fast_path_requests",
            "Tenant requests answered on the fast path below ASGI (NOCOSUP_PROXY_FAST_PATH).",
            value=self.host.fast_path_requests,
        )
        express = CounterMetricFamily(
            "nocosup_proxy_express_requests",
            "Of those, the ones answered on the express lane (no task, idle pooled connection).",
            value=LANES.express,
        )
        lean = CounterMetricFamily(
            "nocosup_proxy_lean_requests",
            "Of those, the ones answered on the lean lane (whole plain head, whole answer).",
            value=LANES.lean,
        )
        replayed = CounterMetricFamily(
            "nocosup_proxy_replayed_requests",
            "Lean-lane requests sent as their connection's previous request was (replayed or "
            "retargeted), without parsing or routing.",
            value=LANES.replayed,
        )
        now = time.time()
        for env in await supervisor.environments.list():
            seen = env.get("last_heartbeat_at")
            if isinstance(seen, str):
                when = datetime.fromisoformat(seen).timestamp()
                age.add_metric([env["name"]], max(0.0, now - when))
            instances.add_metric([env["name"]], len(env.get("instances") or []))
        return [*families, age, instances, fast, express, lean, replayed]

    async def stop(self) -> None:
        self.gateway = None
        if self.watcher is not None:
            await self.watcher.close()
            self.watcher = None
        if self.replicas is not None:
            await self.replicas.resign()
            self.replicas = None
        if self.runtime is not None:
            await self.runtime.stop_all()
            self.runtime = None
        if self.sender is not None:
            await self.sender.close()
            self.sender = None
        if self.proxy is not None:
            await self.proxy.aclose()
            self.proxy = None
        await close_role_redis(self.redis, self.command_redis)
        self.redis = self.command_redis = None
        self.supervisor = None
        self.idempotency = None
        if self.registry_db is not None:
            await self.registry_db.disconnect()
            self.registry_db = None
