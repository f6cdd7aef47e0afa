"""Tenant apps over real HTTP and WebSocket: isolation, persistence, routing, removal."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import asyncpg
import httpx
import pytest
import websockets

from tests.conftest import PG_DSN
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error


@pytest.fixture(params=["sqlite", "postgres"])
def dialect_server(request: pytest.FixtureRequest, servers: ServerFactory) -> NocosupServer:
    if request.param == "postgres":
        return servers.start(**request.getfixturevalue("pg_env"))
    return servers.start()


async def create(c: httpx.AsyncClient, name: str, **fields: object) -> dict:
    r = await c.post("/api/apps", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def test_two_apps_are_isolated(dialect_server: NocosupServer, run_id: str) -> None:
    async with dialect_server.admin() as c:
        await create(c, f"alpha{run_id}")
        await create(c, f"beta{run_id}")
        a, b = f"/apps/alpha{run_id}", f"/apps/beta{run_id}"
        for i in range(3):
            r = await c.post(
                f"{a}/api/records", json={"title": f"only-in-alpha-{i}", "data": {"n": i}}
            )
            assert r.status_code == 201, r.text
        r = await c.post(f"{b}/api/records", json={"title": "only-in-beta"})
        assert r.status_code == 201
        alpha = (await c.get(f"{a}/api/records")).json()["records"]
        beta = (await c.get(f"{b}/api/records")).json()["records"]
        assert [x["title"] for x in alpha] == [
            "only-in-alpha-0",
            "only-in-alpha-1",
            "only-in-alpha-2",
        ]
        assert alpha[2]["data"] == {"n": 2}
        assert [x["title"] for x in beta] == ["only-in-beta"]
        assert (await c.get(f"{a}/api/info")).json()["app"] == f"alpha{run_id}"
        page = (await c.get(f"{b}/admin")).text
        assert f"beta{run_id}" in page and "only-in-beta" in page and "only-in-alpha" not in page
        # two databases, not one
        dbs = {x["database"]["name"] for x in (await c.get("/api/apps")).json()["apps"]}
        assert len(dbs) == 2


async def test_apps_and_data_survive_a_restart(dialect_server: NocosupServer, run_id: str) -> None:
    name = f"keep{run_id}"
    async with dialect_server.admin() as c:
        await create(c, name, title="Keeper", options={"startMode": "with_supervisor"})
        await create(c, f"lazy{run_id}")
        assert (
            await c.post(f"/apps/{name}/api/records", json={"title": "stays"})
        ).status_code == 201
        await c.post(f"/api/apps/lazy{run_id}/stop")
    dialect_server.restart()
    async with dialect_server.admin() as c:
        apps = {a["name"]: a for a in (await c.get("/api/apps")).json()["apps"]}
        assert set(apps) == {name, f"lazy{run_id}"}
        assert apps[name]["title"] == "Keeper"
        # with_supervisor: started with the host, no request needed
        for _ in range(100):
            app = (await c.get(f"/api/apps/{name}")).json()
            if app["statuses"]["local"] == "running":
                break
            await asyncio.sleep(0.05)
        assert app["statuses"]["local"] == "running"
        # explicitly stopped stays stopped, even on a request
        assert apps[f"lazy{run_id}"]["desired_state"] == "stopped"
        assert_error(await c.get(f"/apps/lazy{run_id}/api/info"), 503, "APP_STOPPED")
        records = (await c.get(f"/apps/{name}/api/records")).json()["records"]
        assert [r["title"] for r in records] == ["stays"]


async def pg_has_database(name: str) -> bool:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname=$1", name))
    finally:
        await conn.close()


async def test_delete_keeps_or_drops_the_database(
    dialect_server: NocosupServer, run_id: str
) -> None:
    pg = dialect_server.env.get("DB_DIALECT") == "postgres"
    async with dialect_server.admin() as c:
        kept = await create(c, f"kept{run_id}")
        dropped = await create(c, f"gone{run_id}")
        for app in (kept, dropped):
            r = await c.post(f"/apps/{app['name']}/api/records", json={"title": "x"})
            assert r.status_code == 201

        def exists(app: dict) -> bool:
            return (
                dialect_server.storage / "databases" / f"{app['database']['name']}.sqlite"
            ).exists()

        def files(app: dict) -> Path:
            return dialect_server.storage / "apps" / app["name"]

        assert (files(kept) / "builds.txt").exists() and (files(dropped) / "builds.txt").exists()
        r = await c.delete(f"/api/apps/{kept['name']}")
        assert r.json()["database_dropped"] is False
        r = await c.delete(f"/api/apps/{dropped['name']}", params={"drop_database": "true"})
        assert r.json()["database_dropped"] is True
        # the app's files go with its database, and stay with it
        assert (files(kept) / "builds.txt").exists() and not files(dropped).exists()
        if pg:
            assert await pg_has_database(kept["database"]["name"])
            assert not await pg_has_database(dropped["database"]["name"])
        else:
            assert exists(kept) and not exists(dropped)
        assert_error(await c.get(f"/apps/{kept['name']}/api/info"), 404, "APP_NOT_FOUND")
        # re-creating the kept app finds its data again
        await create(c, kept["name"])
        records = (await c.get(f"/apps/{kept['name']}/api/records")).json()["records"]
        assert [r["title"] for r in records] == ["x"]
        await create(c, dropped["name"])
        assert (await c.get(f"/apps/{dropped['name']}/api/records")).json()["records"] == []
        # the new app of that name starts without the old one's files
        assert (files(dropped) / "builds.txt").read_text().count("\n") == 1


async def test_postgres_schema_per_app(
    servers: ServerFactory, pg_env: dict[str, str], run_id: str
) -> None:
    server = servers.start(**pg_env)
    async with server.admin() as c:
        one = await create(c, f"sch1{run_id}", options={"dbConnType": "new_schema"})
        two = await create(c, f"sch2{run_id}", options={"dbConnType": "new_schema"})
        assert one["database"] == {
            "connType": "new_schema",
            "name": pg_env["DB_DATABASE"],
            "schema": f"app_sch1{run_id}",
        }
        await c.post(f"/apps/{one['name']}/api/records", json={"title": "in-one"})
        assert (await c.get(f"/apps/{two['name']}/api/records")).json()["records"] == []
        conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + pg_env["DB_DATABASE"])
        try:
            count = await conn.fetchval(f'SELECT count(*) FROM "app_sch1{run_id}".starter_records')
            assert count == 1
            await c.delete(f"/api/apps/{two['name']}", params={"drop_database": "1"})
            gone = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname=$1", f"app_sch2{run_id}"
            )
            assert gone is None
        finally:
            await conn.close()


async def test_create_failure_leaves_no_half_made_app(
    servers: ServerFactory, pg_env: dict[str, str], run_id: str
) -> None:
    """A database user without CREATEDB: the caller gets the error, nothing is left."""
    role = f"nocosup_t_{run_id}_nocreate"
    registry_db = pg_env["DB_DATABASE"]
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        await conn.execute(f'CREATE DATABASE "{registry_db}" OWNER "{role}"')
        server = servers.start(**{**pg_env, "DB_USER": role})
        async with server.admin() as c:
            r = await c.post("/api/apps", json={"name": "nope"})
            assert_error(r, 500, "DATABASE_ERROR")
            assert "permission denied" in r.json()["error"]["message"]
            assert (await c.get("/api/apps")).json()["apps"] == []
            assert_error(await c.get("/apps/nope/api/info"), 404, "APP_NOT_FOUND")
            # the name is free again once the cause is fixed
            await conn.execute(f'ALTER ROLE "{role}" CREATEDB')
            assert (await c.post("/api/apps", json={"name": "nope"})).status_code == 201
        server.stop()
    finally:
        for db in (registry_db, f"{registry_db}_app_nope"):
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        await conn.close()


async def test_routing_by_header_redirect_and_unknown(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "hdr")
        r = await c.get("/api/info", headers={"X-App": "hdr"})
        assert r.status_code == 200 and r.json()["app"] == "hdr"
        r = await c.get("/apps/hdr?x=1", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/apps/hdr/?x=1"
        assert_error(await c.get("/apps/ghost/api/info"), 404, "APP_NOT_FOUND")
        assert_error(await c.get("/api/info", headers={"X-App": "ghost"}), 404, "APP_NOT_FOUND")
        assert_error(await c.get("/apps/hdr/nothing"), 404, "NOT_FOUND")


async def test_blob_streams_and_checks_size(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "blob")
        size = 10 * 1024 * 1024 + 7
        got = 0
        digest = hashlib.sha256()
        async with c.stream("GET", "/apps/blob/api/blob", params={"size": size}) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            async for chunk in r.aiter_bytes():
                got += len(chunk)
                digest.update(chunk)
        # every byte, and the right ones: the starter's blob is 'x' repeated
        assert got == size
        assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
        for bad in ("-1", "abc", str(64 * 1024 * 1024 + 1), ""):
            assert_error(
                await c.get("/apps/blob/api/blob", params={"size": bad}),
                422,
                "VALIDATION_ERROR",
                "size",
            )
        assert_error(
            await c.post("/apps/blob/api/records", json={"title": ""}),
            422,
            "VALIDATION_ERROR",
            "title",
        )
        assert_error(await c.post("/apps/blob/api/records", content=b"{"), 422, "INVALID_JSON")


async def test_websocket_echo(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "ws")
    ws_url = sqlite_server.url.replace("http", "ws") + "/apps/ws/api/echo"
    async with websockets.connect(ws_url) as ws:
        for i in range(5):
            await ws.send(json.dumps({"n": i}))
            assert json.loads(await ws.recv()) == {"n": i}
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
    # a WebSocket to an unknown app is refused with the JSON error
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(
            sqlite_server.url.replace("http", "ws") + "/apps/ghost/api/echo"
        ):
            pass
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body)["error"]["code"] == "APP_NOT_FOUND"
