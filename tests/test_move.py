"""Moving apps between environments, with real parts: one supervisor and three workers
(uvicorn processes) on real Redis and PostgreSQL, shared by every test of the module.

A PostgreSQL-backed app moves under a request loop (only 503 with Retry-After, its data
read on the target after); the refusals (a SQLite file, bad input, an offline target, the
shared-memory mode); an idempotent retry; a stopped app; the CLI; and failover once the
only environment of an app with ``options.failover`` is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.cluster import Cluster, wait_for
from tests.conftest import PG_DSN, REDIS_URL
from tests.inproc import InProc
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_cli import run
from tests.test_rolling import Load
from tests.test_tenants import create


@pytest.fixture(scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, redis_prefix: str
) -> AsyncIterator[Cluster]:
    """Supervisor (failover after 1 s) + env_a + env_b + env_c, all registered."""
    servers = ServerFactory(tmp_path_factory.mktemp("move"))
    pg_env = {
        "DB_DIALECT": "postgres",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "5432",
        "DB_USER": "postgres",
        "DB_DATABASE": f"{pg_database}_mv",
    }
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    try:
        cluster.start_supervisor(NOCOSUP_FAILOVER_AFTER="1")
        for name in ("env_a", "env_b", "env_c"):
            cluster.start_worker(name)
        async with sup(cluster).admin() as c:
            await cluster.wait_environments(c, {"env_a": 1, "env_b": 1, "env_c": 1})
        yield cluster
    finally:
        servers.stop_all()


def sup(cluster: Cluster) -> NocosupServer:
    assert cluster.supervisor is not None
    return cluster.supervisor


async def move(c: httpx.AsyncClient, name: str, to: str, **kwargs: Any) -> httpx.Response:
    return await c.post(f"/api/apps/{name}/move", json={"to": to}, **kwargs)


async def events_of(client: httpx.AsyncClient, seen: list[dict[str, Any]]) -> None:
    """Collect the app_changed events of ``GET /api/events`` into ``seen``."""
    async with client.stream("GET", "/api/events") as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("type") == "app_changed":
                    seen.append(event)


async def test_move_under_load_keeps_data_and_answers_only_503(cluster: Cluster) -> None:
    async with sup(cluster).admin() as c:
        await create(c, "mover", environments=["env_a"])
        assert (await c.post("/api/apps/mover/start")).status_code == 200
        r = await c.post("/apps/mover/api/records", json={"title": "before the move"})
        assert r.status_code == 201, r.text
        envs = {e["name"]: e for e in (await c.get("/api/environments")).json()["environments"]}
        # where each environment keeps app data: the same PostgreSQL server and names
        assert envs["env_a"]["databases"] == envs["env_b"]["databases"]
        assert envs["env_a"]["databases"]["dialect"] == "postgres"
        # DB_HOST=127.0.0.1: this machine's server, named by the machine
        where = envs["env_a"]["databases"]["shared"]["postgres"]
        assert where.startswith("postgresql://localhost:5432/")
        assert where.endswith(f" on {socket.gethostname()}")

    seen: list[dict[str, Any]] = []
    load = Load()
    async with (
        sup(cluster).admin() as listener,
        httpx.AsyncClient(base_url=sup(cluster).url, timeout=60) as client,
    ):
        watcher = asyncio.create_task(events_of(listener, seen))
        loaders = [asyncio.create_task(load.run(client, ["mover"])) for _ in range(4)]
        try:
            await wait_for(lambda: _served(load, 20))
            async with sup(cluster).admin() as c:
                began = time.monotonic()
                r = await move(c, "mover", "env_b")
                took = time.monotonic() - began
            assert r.status_code == 200, r.text
            before = load.served.get("mover", 0)
            await wait_for(lambda: _served(load, before + 20))
        finally:
            load.stop.set()
            await asyncio.gather(*loaders)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    app = r.json()
    assert app["environments"] == ["env_b"]
    assert app["moved"] == {"from": ["env_a"], "to": "env_b"}
    assert app["statuses"] == {"env_b": "running"}
    assert app["results"]["env_b"]["ok"] and app["results"]["env_a"]["ok"]
    failures = load.failures.get("mover", [])
    for _when, what, resp in failures:
        assert resp is not None, what  # never a connection error or a cut response
        assert resp.status_code == 503, what
        assert resp.headers.get("retry-after"), what
    window = failures[-1][0] - failures[0][0] if failures else 0.0
    print(
        f"\nmove under load: {took:.2f} s for the call, {load.served['mover']} served, "
        f"{len(failures)} x 503 over {window:.2f} s"
    )
    async with sup(cluster).admin() as c:
        info = (await c.get("/apps/mover/api/info")).json()
        assert info["environment"] == "env_b"
        records = (await c.get("/apps/mover/api/records")).json()["records"]
        assert [x["title"] for x in records] == ["before the move"]
        # env_a forgot it: asked directly, it sends the caller back to the supervisor
        async with httpx.AsyncClient(base_url=cluster.workers["env_a"].url) as worker:
            direct = await worker.get("/apps/mover/api/info")
        assert_error(direct, 503, "APP_ENVIRONMENT_UNAVAILABLE")
        metrics = (await c.get("/metrics")).text
        assert 'nocosup_moves_total{app="mover",environment="env_b"} 1.0' in metrics
    moves = [e["move"] for e in seen if e["app"] == "mover" and "move" in e]
    assert [m["state"] for m in moves] == ["starting", "done"], seen
    assert moves[-1] == {"from": ["env_a"], "to": "env_b", "reason": "admin", "state": "done"}


async def _served(load: Load, count: int) -> bool:
    return load.served.get("mover", 0) >= count


async def test_sqlite_app_and_bad_input_are_refused(cluster: Cluster) -> None:
    async with sup(cluster).admin() as c:
        await create(c, "lite", environments=["env_a"], options={"dbProvisioner": "sqlite"})
        r = await move(c, "lite", "env_b")
        assert_error(r, 409, "APP_NOT_MOVABLE")
        assert "SQLite file" in r.json()["error"]["message"]
        assert (await c.get("/api/apps/lite")).json()["environments"] == ["env_a"]

        await create(c, "stay", environments=["env_a"])
        assert_error(await move(c, "stay", "env_a"), 422, "VALIDATION_ERROR", "to")
        assert_error(await move(c, "stay", "mars"), 422, "VALIDATION_ERROR", "to")
        assert_error(await move(c, "ghost", "env_b"), 404, "APP_NOT_FOUND")
        url = "/api/apps/stay/move"
        assert_error(await c.post(url, json={}), 422, "VALIDATION_ERROR", "to")
        assert_error(await c.post(url, json={"to": 5}), 422, "VALIDATION_ERROR", "to")
        r = await c.post(url, json={"to": "env_b", "from": "env_a"})
        assert_error(r, 422, "VALIDATION_ERROR", "from")
        assert_error(await c.post(url, content=b"{"), 422, "INVALID_JSON")
        assert_error(await c.post(url, json=["env_b"]), 422, "INVALID_JSON")
        assert (await c.get(url)).status_code == 405
        assert (await c.get("/api/apps/stay")).json()["environments"] == ["env_a"]


async def test_a_move_whose_target_cannot_start_the_app_is_undone(cluster: Cluster) -> None:
    async with sup(cluster).admin() as c:
        options = {"test": {"crash": "lifespan"}}
        await create(c, "fragile", environments=["env_a"], options=options)
        r = await move(c, "fragile", "env_b")
        assert_error(r, 502, "COMMAND_FAILED")
        error = r.json()["error"]
        assert "stays on env_a" in error["message"]
        assert error["results"]["env_b"]["status"] == "error"
        assert error["app"]["environments"] == ["env_a"]
        app = (await c.get("/api/apps/fragile")).json()
        assert app["environments"] == ["env_a"]
        assert app["version"] == 3  # moved, and moved back


async def test_idempotent_retry_and_a_stopped_app(cluster: Cluster) -> None:
    async with sup(cluster).admin() as c:
        await create(c, "again", environments=["env_a"])
        assert (await c.post("/api/apps/again/stop")).status_code == 200
        key = {"Idempotency-Key": "move-again-1"}
        first = await move(c, "again", "env_b", headers=key)
        assert first.status_code == 200, first.text
        # stopped: its placement moves, nothing boots
        assert first.json()["statuses"] == {"env_b": "stopped"}
        assert first.json()["desired_state"] == "stopped"
        retry = await move(c, "again", "env_b", headers=key)
        assert retry.status_code == 200
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json() == first.json()
        assert_error(await move(c, "again", "env_a", headers=key), 422, "IDEMPOTENCY_KEY_REUSED")
        # without the key, the same move again is a mistake the caller hears of
        assert_error(await move(c, "again", "env_b"), 422, "VALIDATION_ERROR", "to")
        started = await c.post("/api/apps/again/start")
        assert started.json()["statuses"] == {"env_b": "running"}
        assert (await c.get("/apps/again/api/info")).json()["environment"] == "env_b"


async def test_cli_moves_and_reports_failures(cluster: Cluster) -> None:
    async with sup(cluster).admin() as c:
        await create(c, "clim", environments=["env_b"])
    proc = await asyncio.to_thread(run, sup(cluster), "apps", "move", "clim", "--to", "env_a")
    assert proc.returncode == 0, proc.stderr
    assert "clim moved to env_a: env_a:" in proc.stdout
    assert "moving clim to env_a" in proc.stderr
    proc = await asyncio.to_thread(run, sup(cluster), "apps", "move", "clim", "--to", "nowhere")
    assert proc.returncode == 1
    assert "VALIDATION_ERROR" in proc.stderr and "nowhere" in proc.stderr
    proc = await asyncio.to_thread(run, sup(cluster), "apps", "move", "clim")
    assert proc.returncode == 2 and "--to" in proc.stderr
    proc = await asyncio.to_thread(
        run, sup(cluster), "apps", "move", "clim", "--to", "env_b", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["environments"] == ["env_b"]


async def crash_placed(cluster: Cluster, pg_database: str, name: str, envs: list[str]) -> None:
    """Kill the supervisor (``SIGKILL``) and place app ``name`` on ``envs`` in the registry
    behind its back: what a crash right after a move's switch leaves."""
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + f"/{pg_database}_mv")
    try:
        await asyncio.to_thread(sup(cluster).stop, signal.SIGKILL)
        await conn.execute(
            "UPDATE nocosup_apps SET environments = $1, version = version + 1 WHERE name = $2",
            json.dumps(envs),
            name,
        )
    finally:
        await conn.close()


async def test_a_supervisor_crash_mid_move_converges(cluster: Cluster, pg_database: str) -> None:
    """The registry switched to env_b, then the supervisor died before env_a let the app
    go: once restarted, the upkeep's sweep removes the copy env_a still runs."""
    async with sup(cluster).admin() as c:
        await create(c, "crashy", environments=["env_a"])
        assert (await c.post("/api/apps/crashy/start")).status_code == 200
        r = await c.post("/apps/crashy/api/records", json={"title": "kept"})
        assert r.status_code == 201, r.text
    await crash_placed(cluster, pg_database, "crashy", ["env_b"])
    async with httpx.AsyncClient(base_url=cluster.workers["env_a"].url) as env_a:
        assert (await env_a.get("/apps/crashy/api/info")).status_code == 200  # the stray
        await asyncio.to_thread(sup(cluster).start)

        async def let_go() -> bool:
            return (await env_a.get("/apps/crashy/api/info")).status_code == 503

        await wait_for(let_go, timeout=30)
    async with sup(cluster).admin() as c:
        info = (await c.get("/apps/crashy/api/info")).json()
        assert info["environment"] == "env_b"
        records = (await c.get("/apps/crashy/api/records")).json()["records"]
        assert [x["title"] for x in records] == ["kept"]
        app = (await c.get("/api/apps/crashy")).json()
        assert app["environments"] == ["env_b"] and app["statuses"] == {"env_b": "running"}


async def test_a_crash_after_the_target_failed_keeps_the_working_copy(
    cluster: Cluster, pg_database: str
) -> None:
    """The registry switched to env_b, env_b failed to start the app, and the supervisor
    died before switching back: the sweep keeps env_a's copy (the only one that works)
    instead of removing it as a stray, and moving the app back serves it again."""
    options = {"test": {"crash": "lifespan", "crashIn": "env_b"}}
    async with sup(cluster).admin() as c:
        await create(c, "stranded", environments=["env_a"], options=options)
        assert (await c.post("/api/apps/stranded/start")).status_code == 200
        r = await c.post("/apps/stranded/api/records", json={"title": "kept"})
        assert r.status_code == 201, r.text
    await crash_placed(cluster, pg_database, "stranded", ["env_b"])
    await asyncio.to_thread(sup(cluster).start)
    async with sup(cluster).admin() as c:
        await c.post("/api/apps/stranded/start")  # env_b fails it, as the move's start did

        async def failed_there() -> bool:
            app = (await c.get("/api/apps/stranded")).json()
            return bool(app["statuses"] == {"env_b": "error"})

        await wait_for(failed_there, timeout=30)

        async def kept() -> bool:
            return "stranded does not run where the registry places it" in sup(cluster).tail(400)

        await wait_for(kept, timeout=60)  # the sweep ran and decided
        async with httpx.AsyncClient(base_url=cluster.workers["env_a"].url) as env_a:
            assert (await env_a.get("/apps/stranded/api/info")).status_code == 200
        r = await move(c, "stranded", "env_a")
        assert r.status_code == 200, r.text
        records = (await c.get("/apps/stranded/api/records")).json()["records"]
        assert [x["title"] for x in records] == ["kept"]


async def test_failover_after_the_only_environment_dies(cluster: Cluster) -> None:
    """Last: it kills env_c for good."""
    async with sup(cluster).admin() as c:
        await create(c, "phoenix", environments=["env_c"], options={"failover": True})
        await create(c, "grounded", environments=["env_c"])
        assert (await c.post("/api/apps/phoenix/start")).status_code == 200
        r = await c.post("/apps/phoenix/api/records", json={"title": "survives"})
        assert r.status_code == 201, r.text
        assert_error(
            await c.patch("/api/apps/grounded", json={"options": {"failover": "yes"}}),
            422,
            "VALIDATION_ERROR",
            "options.failover",
        )
        cluster.workers["env_c"].stop(signal.SIGKILL)
        began = time.monotonic()

        async def answering_elsewhere() -> dict[str, Any] | None:
            resp = await c.get("/apps/phoenix/api/info")
            return resp.json() if resp.status_code == 200 else None

        info = await wait_for(answering_elsewhere, timeout=30)
        print(
            f"\nfailover: answering on {info['environment']} {time.monotonic() - began:.2f} s "
            "after the kill"
        )
        assert info["environment"] in ("env_a", "env_b")
        app = (await c.get("/api/apps/phoenix")).json()
        assert app["environments"] == [info["environment"]]
        records = (await c.get("/apps/phoenix/api/records")).json()["records"]
        assert [x["title"] for x in records] == ["survives"]
        metrics = (await c.get("/metrics")).text
        where = info["environment"]
        assert f'nocosup_failovers_total{{app="phoenix",environment="{where}"}} 1.0' in metrics
        # no option, no failover; and an offline environment takes no move
        assert (await c.get("/api/apps/grounded")).json()["environments"] == ["env_c"]
        assert_error(await move(c, "grounded", "env_c"), 422, "VALIDATION_ERROR", "to")
        assert_error(await move(c, "phoenix", "env_c"), 409, "APP_NOT_MOVABLE")
        # done once: it is not moved again round after round
        version = app["version"]
        await asyncio.sleep(2.5)
        assert (await c.get("/api/apps/phoenix")).json()["version"] == version


async def test_shared_memory_mode_has_nothing_to_move(inproc: InProc) -> None:
    assert (await inproc.api.post("/api/apps", json={"name": "solo"})).status_code == 201
    r = await inproc.api.post("/api/apps/solo/move", json={"to": "local"})
    assert_error(r, 409, "APP_NOT_MOVABLE")
    assert "shared-memory" in r.json()["error"]["message"]
