"""Database timeouts and the tenant connection budget, against real PostgreSQL.

A frozen PostgreSQL is a TCP relay (tests/relay.py) that stops forwarding bytes: the
shared server is never touched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from nocosup.errors import DatabaseUnavailable
from nocosup.pgpool import ConnectionBudget, DbTimeouts
from nocosup.pgpool import pg_database as budget_database
from tests.conftest import PG_DSN
from tests.inproc import inproc_settings, running_host
from tests.relay import relay
from tests.test_admin_api import assert_error
from tests.test_tenants import create

FAST = {"NOCOSUP_DB_CONNECT_TIMEOUT": "1", "NOCOSUP_DB_STATEMENT_TIMEOUT": "1"}


async def test_frozen_postgres_gives_503_not_a_hang(tmp_path: Path, pg_env: dict[str, str]) -> None:
    with relay("127.0.0.1", 5432) as pg:
        env = {**pg_env, "DB_PORT": str(pg.port), **FAST}
        async with running_host(inproc_settings(tmp_path, **env)) as sup:
            api = sup.api
            await create(api, "frozen1")
            ok = await api.post("/apps/frozen1/api/records", json={"title": "before"})
            assert ok.status_code == 201, ok.text
            pg.freeze()
            try:
                listing = await api.get("/api/apps")
                assert_error(listing, 503, "DATABASE_UNAVAILABLE")
                assert listing.headers["retry-after"]
                assert_error(
                    await api.post("/api/apps", json={"name": "new1"}), 503, "DATABASE_UNAVAILABLE"
                )
                tenant = await api.get("/apps/frozen1/api/records")
                assert_error(tenant, 503, "DATABASE_UNAVAILABLE")
                ready = await api.get("/readyz")
                assert ready.status_code == 503
                body = ready.json()
                assert body["status"] == "unavailable"
                assert isinstance(body["checks"]["database"], str), body
            finally:
                pg.thaw()
            # connections that timed out were dropped, not handed out again
            assert (await api.get("/api/apps")).status_code == 200
            again = await api.get("/apps/frozen1/api/records")
            assert again.status_code == 200 and again.json()["records"][0]["title"] == "before"
            assert (await api.get("/readyz")).status_code == 200


async def test_a_tenant_boot_that_cannot_reach_its_database_fails_with_a_reason(
    tmp_path: Path, pg_env: dict[str, str]
) -> None:
    with relay("127.0.0.1", 5432) as pg:
        env = {**pg_env, "DB_PORT": str(pg.port), **FAST}
        async with running_host(inproc_settings(tmp_path, **env)) as sup:
            await create(sup.api, "noboot1")
            pg.freeze()
            try:
                resp = await sup.api.get("/apps/noboot1/api/records")
            finally:
                pg.thaw()
            assert_error(resp, 503, "APP_ERROR")
            assert "DatabaseUnavailable" in resp.json()["error"]["message"]


async def _tenant_connections(conn: asyncpg.Connection, registry: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, $1)", registry + "_"
    )
    return count


async def test_twenty_apps_share_a_budget_of_five_connections(
    tmp_path: Path, pg_env: dict[str, str]
) -> None:
    env = {**pg_env, "NOCOSUP_DB_MAX_CONNECTIONS": "5", "NOCOSUP_DB_POOL_IDLE": "1"}
    registry = pg_env["DB_DATABASE"]
    names = [f"bud{i:02d}" for i in range(20)]
    async with running_host(inproc_settings(tmp_path, **env)) as sup:
        for name in names:
            await create(sup.api, name)
        watch = await asyncpg.connect(PG_DSN)
        seen: list[int] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                seen.append(await _tenant_connections(watch, registry))
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        try:

            async def use(name: str, round: int) -> None:
                created = await sup.api.post(f"/apps/{name}/api/records", json={"title": name})
                assert created.status_code == 201, created.text
                listed = await sup.api.get(f"/apps/{name}/api/records")
                assert listed.status_code == 200, listed.text
                assert [r["title"] for r in listed.json()["records"]] == [name] * round

            for round in (1, 2):  # boots and first queries, then queries on running apps
                await asyncio.gather(*(use(n, round) for n in names))
            done.set()
            await sampler
            assert seen and max(seen) <= 5, max(seen)
            budget = sup.host.databases.provisioners["postgres"].budget  # type: ignore[attr-defined]
            assert budget.open <= 5
            # idle pools give their connections back
            for _ in range(200):
                if await _tenant_connections(watch, registry) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await _tenant_connections(watch, registry) == 0
            assert budget.open == 0
            # and reopen on demand
            again = await sup.api.get(f"/apps/{names[0]}/api/records")
            assert again.status_code == 200, again.text
        finally:
            done.set()
            await asyncio.gather(sampler, return_exceptions=True)
            await watch.close()


async def test_a_spent_budget_waits_a_bounded_time_then_says_so(pg_database: str) -> None:
    url = PG_DSN.rsplit("/", 1)[0] + "/" + pg_database
    budget = ConnectionBudget(limit=1, idle=60, wait=0.2)
    timeouts = DbTimeouts(connect=2, statement=5)
    first = budget_database(url, budget, timeouts, max_size=1)
    second = budget_database(url, budget, timeouts, max_size=1)
    await first.connect()
    try:
        async with first.connection() as held, held.transaction():
            # the one connection is busy: the other database connects lazily (a boot does
            # not fail for it), and its query waits a bounded time, then says why
            await second.connect()
            with pytest.raises(DatabaseUnavailable, match="no connection came free"):
                await second.fetch_val("SELECT 1")
        # released and idle: the other database takes its slot
        assert await second.fetch_val("SELECT 1") == 1
        assert budget.open == 1
        assert await first.fetch_val("SELECT 2") == 2  # and back
        assert budget.open == 1
    finally:
        await first.disconnect()
        if second.is_connected:
            await second.disconnect()
    assert budget.open == 0


async def test_a_statement_over_its_timeout_gives_database_unavailable(pg_database: str) -> None:
    url = PG_DSN.rsplit("/", 1)[0] + "/" + pg_database
    budget = ConnectionBudget(limit=2, idle=60, wait=1)
    db = budget_database(url, budget, DbTimeouts(connect=2, statement=0.3), max_size=2)
    await db.connect()
    try:
        with pytest.raises(DatabaseUnavailable, match="did not answer"):
            await db.fetch_val("SELECT pg_sleep(5)")
        assert await db.fetch_val("SELECT 3") == 3
    finally:
        await db.disconnect()
    assert budget.open == 0
