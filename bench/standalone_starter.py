"""The starter app served alone by uvicorn: the "direct" side of bench/dispatch.py.

    NOCOSUP_STORAGE_DIR=/tmp/x uvicorn bench.standalone_starter:create_app --factory

It builds the very app a nocosup host runs for a tenant (``nocosup_starter.app.build_app``)
from an :class:`~nocosup.appctx.AppContext` made the way ``LocalRuntime.context`` makes
it, so the only difference from the host path is the host itself. Settings come from the
environment like the host's (SQLite under NOCOSUP_STORAGE_DIR by default); the app name is
BENCH_APP_NAME (default ``bench``). The database is provisioned as the host provisions it
(``TenantDatabases.create``: file + WAL) at lifespan start-up, before the app's own lifespan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from starlette.applications import Starlette

from nocosup import validation as v
from nocosup.appctx import AppContext
from nocosup.config import Settings
from nocosup.provisioning import BUILTIN_PROVISIONERS, TenantDatabases
from nocosup.registry import AppRecord
from nocosup_starter.app import build_app

if TYPE_CHECKING:
    from nocosup.host import Host


@dataclass
class _NoHost:
    """Stands in for the Host: AppContext reads only ``host.settings`` (for storage_dir)
    and ``host.databases`` (to open the app's database)."""

    settings: Settings
    databases: TenantDatabases


def make_context(settings: Settings, name: str) -> AppContext:
    """An AppContext for app ``name`` outside any host, as LocalRuntime.context builds one."""
    databases = TenantDatabases(settings, [kind(settings) for kind in BUILTIN_PROVISIONERS])
    spec = databases.spec_for(v.app_name(name), None, None)
    record = AppRecord(
        name=name,
        title=name,
        environments=[settings.environment_name],
        options={**v.options({}), "dbConnType": spec.conn_type},
        database=spec.to_json(),
    )
    host = cast("Host", _NoHost(settings, databases))
    return AppContext(record, settings.environment_name, settings.instance_id, host)


def create_app(settings: Settings | None = None, name: str | None = None) -> Starlette:
    """uvicorn factory: the starter app for BENCH_APP_NAME with its database provisioned.

    uvicorn calls it without arguments (settings from the environment); bench scripts may
    pass their own settings and name to build it in-process.
    """
    settings = settings or Settings.from_env()
    ctx = make_context(settings, name or os.environ.get("BENCH_APP_NAME", "bench"))
    app = build_app(ctx)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[None]:
        await ctx.host.databases.create(ctx.database_spec)
        async with inner(a):
            yield

    # Swapping the router's lifespan keeps the request path exactly the starter's own.
    app.router.lifespan_context = lifespan
    return app
