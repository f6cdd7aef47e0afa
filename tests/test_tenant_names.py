"""Tenant databases never take one nocosup uses itself (issue 9, bug 5), laid out as the
Kubernetes example is: a supervisor on ``<db>`` and a worker whose own database is
``<db>_env_a``. Real worker processes, Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from nocosup.config import Settings
from nocosup.errors import DatabaseNameReserved
from nocosup.provisioning import SqliteProvisioner, TenantDatabase, TenantDatabases
from tests.cluster import Cluster
from tests.conftest import PG_DSN, REDIS_URL, drop_databases
from tests.servers import ServerFactory
from tests.test_admin_api import assert_error


async def pg_table_count(database: str) -> int | None:
    """Tables in ``database``'s public schema, None when the database does not exist."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", database):
            return None
    finally:
        await conn.close()
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + database)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        return count
    finally:
        await conn.close()


@pytest.fixture
async def short_registry(run_id: str, servers: ServerFactory) -> AsyncIterator[str]:
    """A registry name short enough for ``{name}_app_env_b`` to be a valid DB_DATABASE
    (the session's are not); every database starting with it is dropped at the end,
    once the test's servers have stopped."""
    name = f"ns{run_id}"
    with servers:
        yield name
    await drop_databases(name)


async def test_an_app_named_after_a_worker_database(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, short_registry: str
) -> None:
    registry = short_registry
    cluster = Cluster(servers, {**pg_env, "DB_DATABASE": registry}, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor()
    own_a = f"{registry}_env_a"  # the Kubernetes example's worker database
    own_b = f"{registry}_app_env_b"  # a worker database inside the tenants' scheme
    # as deployed: workers name tenant databases after the supervisor's DB_DATABASE
    cluster.start_worker("env_a", DB_DATABASE=own_a, NOCOSUP_TENANT_DB_PREFIX=registry)
    cluster.start_worker("env_b", DB_DATABASE=own_b, NOCOSUP_TENANT_DB_PREFIX=registry)
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + own_a)
    try:
        await conn.execute("CREATE TABLE worker_own (x int)")  # the worker's own data
    finally:
        await conn.close()
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
        r = await c.post("/api/apps", json={"name": "env_a", "environments": ["env_a"]})
        assert r.status_code == 201, r.text
        assert r.json()["database"]["name"] == f"{registry}_app_env_a"
        r = await c.post("/apps/env_a/api/records", json={"title": "tenant data"})
        assert r.status_code == 201, r.text
        r = await c.delete("/api/apps/env_a", params={"drop_database": "true"})
        assert r.status_code == 200 and r.json()["database_dropped"] is True, r.text
        assert await pg_table_count(f"{registry}_app_env_a") is None
        assert await pg_table_count(own_a) == 1  # untouched: its table, nothing else

        # the worker on {registry}_app_env_b refuses to make (or drop) it for a tenant
        r = await c.post("/api/apps", json={"name": "env_b", "environments": ["env_b"]})
        assert_error(r, 502, "COMMAND_FAILED")
        assert "own database" in r.json()["error"]["message"]
        assert_error(await c.get("/api/apps/env_b"), 404, "APP_NOT_FOUND")
        assert await pg_table_count(own_b) == 0  # there, and left alone

        # a schema per app sits in DB_DATABASE in a schema of its own, never in public
        r = await c.post(
            "/api/apps",
            json={"name": "x", "options": {"dbConnType": "new_schema"}, "environments": ["env_a"]},
        )
        assert r.status_code == 201, r.text
        assert r.json()["database"]["schema"] == "app_x"


def test_reserved_names_are_refused(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path, db_database="nocosup")
    dbs = TenantDatabases(settings, [SqliteProvisioner(settings)])
    assert dbs.spec_for("crm", None, None).name == "nocosup_app_crm"
    for spec in (
        TenantDatabase("new_database", "nocosup"),
        TenantDatabase("new_database", "postgres"),
        TenantDatabase("new_database", "template1"),
        TenantDatabase("new_schema", "nocosup", "public"),
        TenantDatabase("new_schema", "nocosup", "pg_catalog"),
        TenantDatabase("new_schema", "nocosup", "information_schema"),
    ):
        with pytest.raises(DatabaseNameReserved):
            dbs.check_reserved(spec)
    dbs.check_reserved(TenantDatabase("new_database", "nocosup_crm"))  # an old app's: fine
    dbs.check_reserved(TenantDatabase("new_schema", "nocosup", "crm"))


async def test_a_reserved_name_is_never_dropped(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path, db_database="nocosup")
    dbs = TenantDatabases(settings, [SqliteProvisioner(settings)])
    with pytest.raises(DatabaseNameReserved):
        await dbs.drop(TenantDatabase("new_database", "nocosup"))
    with pytest.raises(DatabaseNameReserved):
        await dbs.create(TenantDatabase("new_database", "nocosup"))


async def test_an_app_name_too_long_for_db_database_is_422(tmp_path: Path) -> None:
    from tests.inproc import inproc_settings, running_host

    settings = inproc_settings(tmp_path, DB_DATABASE="d" * 22)
    async with running_host(settings) as h:
        r = await h.api.post("/api/apps", json={"name": "a" * 40})
        assert_error(r, 422, "VALIDATION_ERROR", "name")
        assert "longer than 63 bytes" in r.json()["error"]["message"]
        r = await h.api.post("/api/apps", json={"name": "a" * 36})
        assert r.status_code == 201, r.text
