"""The supervisor role: the registry, the admin API, and apps run here or on workers."""

from __future__ import annotations

import logging
from typing import Any

from starlette.routing import BaseRoute

from nocosup import admin_api
from nocosup.auth import resolve_admin_token
from nocosup.db import connect_registry
from nocosup.environments import LocalEnvironments
from nocosup.hookspecs import hookimpl
from nocosup.host import Host
from nocosup.process import LocalProcess
from nocosup.registry import Registry
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
    registry = Registry(db)
    await registry.migrate()
    runtime = LocalRuntime(host)
    host.services["runtime"] = runtime
    process = LocalProcess(runtime)
    environments = LocalEnvironments(settings)
    supervisor = Supervisor(host, registry, process, environments)
    host.services["supervisor"] = supervisor
    host.readiness["database"] = lambda: db.fetch_val("SELECT 1")
    await supervisor.restore()


@hookimpl(trylast=True)
def shutdown(host: Host) -> Any:
    return _shutdown(host)


async def _shutdown(host: Host) -> None:
    supervisor: Supervisor | None = host.services.pop("supervisor", None)
    if supervisor is not None:
        await supervisor.close()
    runtime: LocalRuntime | None = host.services.pop("runtime", None)
    if runtime is not None:
        await runtime.stop_all()
    db = host.services.pop("registry_db", None)
    if db is not None:
        await db.disconnect()


@hookimpl
def app_gateway(host: Host) -> Any:
    return host.services.get("runtime")
