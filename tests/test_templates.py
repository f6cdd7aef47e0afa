"""App templates (``nocosup.templates`` entry points) and what a factory learns from its
AppContext: the templates are fake distributions written into a folder on ``sys.path``,
found by importlib.metadata exactly as pip-installed ones."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.gates import IMPORT_BEGAN, IMPORT_MAY_END
from tests.inproc import inproc_settings, running_host
from tests.plugin_dist import install_templates
from tests.servers import ROOT, ServerFactory

PROBE = '''
"""Answers what its AppContext says, and reads its own data through every driver."""
import contextlib

import aiosqlite
import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


def build(ctx):
    """Reports its context and reads one row through asyncpg, aiosqlite and SQLAlchemy."""
    db = ctx.open_database(max_size=1)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await db.connect()
        await db.execute("CREATE TABLE IF NOT EXISTS probe (word TEXT)")
        await db.execute("DELETE FROM probe")
        await db.execute("INSERT INTO probe VALUES ('written by databases')")
        yield
        await db.disconnect()

    async def context(request):
        schema = ctx.database_schema
        engine = create_async_engine(
            ctx.sqlalchemy_url,
            connect_args={"server_settings": {"search_path": schema}} if schema else {},
        )
        try:
            async with engine.connect() as conn:
                via_sqlalchemy = (await conn.execute(sa.text("SELECT word FROM probe"))).scalar()
        finally:
            await engine.dispose()
        if ctx.sqlite_path is not None:
            async with aiosqlite.connect(ctx.sqlite_path) as conn:
                rows = await conn.execute_fetchall("SELECT word FROM probe")
                via_driver = rows[0][0]
        else:
            settings = {"search_path": schema} if schema else None
            conn = await asyncpg.connect(ctx.database_url, server_settings=settings)
            try:
                via_driver = await conn.fetchval("SELECT word FROM probe")
            finally:
                await conn.close()
        return JSONResponse(
            {
                "prefix": ctx.prefix,
                "root_path": request.scope["root_path"],
                "database_url": ctx.database_url,
                "sqlalchemy_url": ctx.sqlalchemy_url,
                "sqlite_path": str(ctx.sqlite_path) if ctx.sqlite_path else None,
                "schema": schema,
                "storage_dir": str(ctx.storage_dir),
                "storage_exists": ctx.storage_dir.is_dir(),
                "via_sqlalchemy": via_sqlalchemy,
                "via_driver": via_driver,
            }
        )

    return Starlette(routes=[Route("/context", context)], lifespan=lifespan)


def undocumented(ctx):
    return build(ctx)
'''


@pytest.fixture
def template_site(tmp_path: Path) -> Iterator[Path]:
    """A distribution ``probe-templates`` with templates ``probe`` and ``plain`` on
    ``sys.path`` for the test."""
    site = install_templates(
        tmp_path / "site",
        "probe-templates",
        {"probe_templates": PROBE},
        {"probe": "probe_templates:build", "plain": "probe_templates:undocumented"},
        version="2.5",
        summary="Templates the tests use",
    )
    sys.path.insert(0, str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("probe_templates", None)


async def test_templates_are_listed_with_their_distribution(
    tmp_path: Path, template_site: Path
) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        r = await h.api.get("/api/templates")
        assert r.status_code == 200
        body = r.json()
        listed = {t["name"]: t for t in body["templates"]}
        assert listed["probe"] == {
            "name": "probe",
            "distribution": "probe-templates",
            "version": "2.5",
            "description": "Reports its context and reads one row through asyncpg, aiosqlite "
            "and SQLAlchemy.",
        }
        # no docstring: the distribution's summary
        assert listed["plain"]["description"] == "Templates the tests use"
        assert listed["starter"]["distribution"] == "nocosup"
        # inproc hosts build apps without a template with NOCOSUP_APP_FACTORY
        assert body["default"] == "tests.factories:build"
        async with h.client() as anonymous:
            assert (await anonymous.get("/api/templates")).status_code == 401


async def test_an_app_is_built_by_its_template(tmp_path: Path, template_site: Path) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        r = await h.api.post("/api/apps", json={"name": "p1", "template": "probe"})
        assert r.status_code == 201, r.text
        assert r.json()["template"] == "probe"
        assert (await h.api.get("/api/apps/p1")).json()["template"] == "probe"
        r = await h.api.get("/apps/p1/context")
        assert r.status_code == 200, r.text
        info = r.json()
        sqlite = h.storage.resolve() / "databases" / "nocosup_app_p1.sqlite"
        assert info["prefix"] == info["root_path"] == "/apps/p1"
        assert info["sqlite_path"] == str(sqlite)
        assert info["database_url"] == f"sqlite:///{sqlite}"
        assert info["sqlalchemy_url"] == f"sqlite+aiosqlite:///{sqlite}"
        assert info["schema"] is None
        assert info["storage_dir"] == str(h.storage / "apps" / "p1")
        assert info["storage_exists"] is True
        assert info["via_sqlalchemy"] == info["via_driver"] == "written by databases"

        # no template: the default factory (here NOCOSUP_APP_FACTORY) as before
        r = await h.api.post("/api/apps", json={"name": "d1"})
        assert r.json()["template"] is None
        assert (await h.api.get("/apps/d1/api/info")).status_code == 200
        builds = (h.storage / "apps" / "d1" / "builds.txt").read_text()
        assert len(builds.splitlines()) == 1

        # the starter is a template of its own too
        r = await h.api.post("/api/apps", json={"name": "s1", "template": "starter"})
        assert r.status_code == 201
        assert (await h.api.get("/apps/s1/api/info")).status_code == 200
        assert not (h.storage / "apps" / "s1" / "builds.txt").exists()


@pytest.mark.parametrize("conn_type", ["new_database", "new_schema"])
async def test_database_urls_reach_the_apps_postgres_data(
    tmp_path: Path, template_site: Path, pg_env: dict[str, str], conn_type: str
) -> None:
    async with running_host(inproc_settings(tmp_path, **pg_env)) as h:
        r = await h.api.post(
            "/api/apps",
            json={"name": "pg1", "template": "probe", "options": {"dbConnType": conn_type}},
        )
        assert r.status_code == 201, r.text
        r = await h.api.get("/apps/pg1/context")
        assert r.status_code == 200, r.text
        info = r.json()
        registry = pg_env["DB_DATABASE"]
        if conn_type == "new_schema":
            assert info["schema"] == "app_pg1"
            assert info["database_url"].endswith(f"@127.0.0.1:5432/{registry}")
        else:
            assert info["schema"] is None
            assert info["database_url"].endswith(f"@127.0.0.1:5432/{registry}_app_pg1")
        assert info["database_url"].startswith("postgresql://")
        assert info["sqlalchemy_url"] == info["database_url"].replace(
            "postgresql://", "postgresql+asyncpg://"
        )
        assert info["sqlite_path"] is None
        assert info["via_sqlalchemy"] == info["via_driver"] == "written by databases"
        await h.api.delete("/api/apps/pg1?drop_database=true")


async def test_unknown_templates_are_refused_naming_the_installed_ones(
    tmp_path: Path, template_site: Path
) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        for given in ("blog", 7, "", "../x", "a" * 65):
            r = await h.api.post("/api/apps", json={"name": "x1", "template": given})
            assert r.status_code == 422, (given, r.text)
            error = r.json()["error"]
            assert error["code"] == "VALIDATION_ERROR"
            assert error["field"] == "template"
            assert "plain, probe, starter" in error["message"]
        r = await h.api.post("/api/apps", json={"name": "x1", "template": "blog"})
        assert r.json()["error"]["message"] == (
            "template 'blog' is not installed; installed: plain, probe, starter"
        )
        assert (await h.api.get("/api/apps")).json()["apps"] == []
        # a template is chosen once
        await h.api.post("/api/apps", json={"name": "x2", "template": "probe"})
        r = await h.api.patch("/api/apps/x2", json={"template": "starter"})
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "template"


async def test_a_process_without_the_template_puts_only_that_app_in_error(
    tmp_path: Path, template_site: Path
) -> None:
    """What a worker does when the template was installed with the supervisor only: the
    app goes to error saying so, and other apps carry on."""
    async with running_host(inproc_settings(tmp_path)) as h:
        r = await h.api.post("/api/apps", json={"name": "gone", "template": "probe"})
        assert r.status_code == 201
        await h.api.post("/api/apps", json={"name": "other"})
        sys.path.remove(str(template_site))
        try:
            r = await h.api.get("/apps/gone/context")
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "APP_ERROR"

            async def error() -> str | None:
                app = (await h.api.get("/api/apps/gone")).json()
                return app["errors"].get("local")  # type: ignore[no-any-return]

            message = await wait_for(error)
            assert message == (
                "TemplateNotInstalled: template 'probe' is not installed in environment "
                "'local' (installed: starter)"
            )
            assert (await h.api.get("/apps/other/api/info")).status_code == 200
        finally:
            sys.path.insert(0, str(template_site))


async def test_a_worker_without_the_template_reports_the_app_in_error(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, template_site: Path
) -> None:
    """Installed with the supervisor (so the name is accepted) but not in the worker's
    environment: the worker loads templates from its own installation and says so."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor(PYTHONPATH=f"{ROOT}:{template_site}")
    cluster.start_worker("env-a")  # PYTHONPATH: the repository only
    async with supervisor.admin() as api:
        await cluster.wait_environments(api, {"env-a": 1})
        r = await api.post("/api/apps", json={"name": "w1", "template": "probe"})
        assert r.status_code == 201, r.text
        r = await api.get("/apps/w1/context")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "APP_ERROR"

        async def reported() -> dict[str, Any]:
            app: dict[str, Any] = (await api.get("/api/apps/w1")).json()
            return app if app["errors"].get("env-a") else {}

        app = await wait_for(reported)
        assert app["statuses"] == {"env-a": "error"}
        assert app["errors"]["env-a"] == (
            "TemplateNotInstalled: template 'probe' is not installed in environment "
            "'env-a' (installed: starter)"
        )
        # installed nowhere near the worker, the starter still runs there
        await api.post("/api/apps", json={"name": "w2", "template": "starter"})
        assert (await api.get("/apps/w2/api/info")).status_code == 200


SLOW = '''
"""A template whose first import takes until the test lets it end."""
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.gates import IMPORT_BEGAN, IMPORT_MAY_END

IMPORT_BEGAN.set()
if not IMPORT_MAY_END.wait(20):
    raise RuntimeError("imported on the event loop: nothing else could run meanwhile")


def build(ctx):
    async def hello(request):
        return PlainTextResponse("imported")

    return Starlette(routes=[Route("/", hello)])
'''


async def test_a_slow_template_import_leaves_the_loop_serving(tmp_path: Path) -> None:
    """The first import of a template module (a big framework: up to a second) runs in a
    thread: while it lasts the process answers other requests."""
    site = install_templates(
        tmp_path / "site",
        "slow-templates",
        {"slow_template": SLOW},
        {"slow": "slow_template:build"},
    )
    sys.path.insert(0, str(site))
    IMPORT_BEGAN.clear()
    IMPORT_MAY_END.clear()
    try:
        async with running_host(inproc_settings(tmp_path)) as h:
            r = await h.api.post("/api/apps", json={"name": "slow", "template": "slow"})
            assert r.status_code == 201, r.text
            first = asyncio.create_task(h.api.get("/apps/slow/"))
            assert await asyncio.to_thread(IMPORT_BEGAN.wait, 20)
            r = await h.api.get("/api/apps")  # served while the import waits
            assert r.status_code == 200
            assert not first.done()
            IMPORT_MAY_END.set()
            r = await first
            assert (r.status_code, r.text) == (200, "imported")
    finally:
        IMPORT_MAY_END.set()
        sys.path.remove(str(site))
        sys.modules.pop("slow_template", None)
