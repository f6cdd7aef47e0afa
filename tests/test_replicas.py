"""Supervisor replicas: two supervisor processes on one PostgreSQL registry and one Redis,
a worker behind them; either answers any admin call and any tenant request."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.cluster import Cluster, wait_for
from tests.conftest import PG_DSN, REDIS_URL
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create
from tests.test_webui import next_event, sse_events


class Pair:
    def __init__(self, cluster: Cluster, a: NocosupServer, b: NocosupServer) -> None:
        self.cluster = cluster
        self.a = a
        self.b = b


@pytest.fixture
async def pair(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> AsyncIterator[Pair]:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    a = cluster.start_supervisor()
    b = servers.start(
        **{**cluster.common(), "APP_MODE": "supervisor", "APP_PROCESS_ADAPTER": "remote"}
    )
    cluster.start_worker("env_a")
    for s in (a, b):
        async with s.admin() as c:
            await cluster.wait_environments(c, {"env_a": 1})
    yield Pair(cluster, a, b)


@pytest.fixture
async def r() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


def instance_of(server: NocosupServer) -> str:
    """The instance id the server's start-up log line gives."""
    found = re.search(r"instance ([A-Za-z0-9_.-]+)\)", server.log.read_text())
    assert found, server.tail()
    return found.group(1)


async def info(server: NocosupServer, app: str) -> int:
    async with server.client() as c:
        return (await c.get(f"/apps/{app}/api/info")).status_code


async def test_create_on_one_start_on_the_other_and_both_route(pair: Pair) -> None:
    async with pair.a.admin() as a, pair.b.admin() as b:
        async with a.stream("GET", "/api/events") as stream:
            events = sse_events(stream)
            await create(b, "shop")  # made through b ...
            # ... reaches a stream on a
            got = await next_event(events, "app_changed", app="shop", action="created")
            assert got["type"] == "app_changed"
            r = await a.post("/api/apps/shop/start")
            assert r.status_code == 200, r.text
            assert r.json()["statuses"] == {"env_a": "running"}
            await next_event(events, "app_status", app="shop", status="running")
        assert await info(pair.a, "shop") == 200
        assert await info(pair.b, "shop") == 200
        listed = (await b.get("/api/apps")).json()
        assert [x["name"] for x in listed["apps"]] == ["shop"]

        # removed through a: b stops routing to it
        assert (await a.delete("/api/apps/shop")).status_code == 200

        async def gone() -> bool:
            return await info(pair.b, "shop") == 404

        await wait_for(gone, timeout=10)


async def test_a_missed_hint_is_caught_by_the_stamp(
    pair: Pair, r: aioredis.Redis, pg_env: dict[str, str]
) -> None:
    async with pair.a.admin() as a:
        await create(a, "quiet")
        assert (await a.post("/api/apps/quiet/start")).status_code == 200
    assert await info(pair.b, "quiet") == 200
    # a write that sent no hint (as if pub/sub dropped it): only the stamp moves
    conn = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + pg_env["DB_DATABASE"])
    try:
        await conn.execute(
            "UPDATE nocosup_apps SET desired_state = 'stopped', version = version + 1"
            " WHERE name = 'quiet'"
        )
    finally:
        await conn.close()
    await r.incr(f"{pair.cluster.prefix}:registry:stamp")

    async def stopped_on_b() -> bool:
        return await info(pair.b, "quiet") == 503

    await wait_for(stopped_on_b, timeout=10)


async def test_admin_calls_on_one_app_wait_for_each_other_across_replicas(
    pair: Pair, r: aioredis.Redis
) -> None:
    async with pair.a.admin() as a, pair.b.admin() as b:
        await create(a, "locked")
        key = f"{pair.cluster.prefix}:lock:admin:locked"
        # another replica's call holds the app (its lock, as the replicas take it)
        assert await r.set(key, "someone-else", px=30_000, nx=True)
        call = asyncio.create_task(b.post("/api/apps/locked/start"))
        await asyncio.sleep(1.0)
        assert not call.done()  # waiting for the holder, not running beside it
        # other apps are not held up
        await create(b, "free")
        await r.delete(key)
        resp = await call
        assert resp.status_code == 200, resp.text


async def test_one_replica_does_the_upkeep_and_the_other_takes_over(
    pair: Pair, r: aioredis.Redis
) -> None:
    key = f"{pair.cluster.prefix}:lease:upkeep"
    holder = await wait_for(lambda: r.get(key))
    leader = pair.a if instance_of(pair.a) == holder else pair.b
    assert instance_of(leader) == holder
    other = pair.b if leader is pair.a else pair.a
    leader.stop(signal.SIGKILL)

    async def moved() -> bool:
        value = await r.get(key)
        return value is not None and value != holder

    await wait_for(moved, timeout=20)
    # the survivor still answers admin calls and routes
    async with other.admin() as c:
        await create(c, "after")
        assert (await c.post("/api/apps/after/start")).status_code == 200
    assert await info(other, "after") == 200


async def test_a_killed_replica_under_load_leaves_the_other_serving(pair: Pair) -> None:
    async with pair.a.admin() as a:
        await create(a, "busy")
        assert (await a.post("/api/apps/busy/start")).status_code == 200
    outcomes: list[int] = []
    stop = asyncio.Event()

    async def load() -> None:
        async with pair.b.client() as c:
            while not stop.is_set():
                try:
                    outcomes.append((await c.get("/apps/busy/api/info")).status_code)
                except httpx.HTTPError:
                    outcomes.append(0)
                await asyncio.sleep(0.01)

    task = asyncio.create_task(load())
    await asyncio.sleep(0.5)
    pair.a.stop(signal.SIGKILL)
    await asyncio.sleep(1.5)
    stop.set()
    await task
    assert outcomes and set(outcomes) == {200}, sorted(set(outcomes))
    async with pair.b.admin() as b:
        r = await b.post("/api/apps/busy/stop")
        assert r.status_code == 200, r.text
        assert_error(await b.get("/apps/busy/api/info"), 503, "APP_STOPPED")


async def test_a_supervisor_serves_with_several_workers(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    sup = servers.start(
        replicas=2,
        **{**cluster.common(), "APP_MODE": "supervisor", "APP_PROCESS_ADAPTER": "remote"},
    )
    cluster.start_worker("env_a")
    async with sup.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        for i in range(6):  # calls land on either process of the socket
            await create(c, f"multi{i}")
            r = await c.post(f"/api/apps/multi{i}/start")
            assert r.status_code == 200, r.text
        for i in range(6):
            assert await info(sup, f"multi{i}") == 200
        assert (await c.get("/api/apps")).json()["total"] == 6
