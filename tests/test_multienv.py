"""Multi-environment mode with real parts: a supervisor, env_a (two replicas behind one
socket) and env_b as uvicorn processes, real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import signal
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create


@pytest.fixture
def cluster(servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str) -> Cluster:
    return Cluster(servers, pg_env, redis_prefix, REDIS_URL)


@pytest.fixture
async def deployed(cluster: Cluster) -> Cluster:
    """Supervisor + env_a (2 replicas) + env_b, all registered."""
    cluster.start_supervisor()
    cluster.start_worker("env_a", replicas=2)
    cluster.start_worker("env_b")
    assert cluster.supervisor is not None
    async with cluster.supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 2, "env_b": 1})
    return cluster


def sup(cluster: Cluster) -> NocosupServer:
    assert cluster.supervisor is not None
    return cluster.supervisor


def boots(cluster: Cluster, env: str, app: str) -> list[tuple[str, float, float]]:
    path = cluster.workers[env].storage / "apps" / app / "boots.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(pid, float(began), float(ended)) for _env, pid, began, ended in rows]


async def test_registration_and_environment_list(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        envs = {e["name"]: e for e in (await c.get("/api/environments")).json()["environments"]}
    a, b = envs["env_a"], envs["env_b"]
    assert a["status"] == b["status"] == "online"
    assert len(a["instances"]) == 2 and len(b["instances"]) == 1
    assert a["url"] == deployed.workers["env_a"].url
    assert a["proxy_url"] == deployed.workers["env_a"].url
    assert a["version"] and a["last_heartbeat_at"] and a["registered_at"]


async def test_create_placement_and_statuses(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        one = await create(c, "onea", environments=["env_a"])
        assert one["environments"] == ["env_a"]
        assert one["statuses"] == {"env_a": "idle"}
        both = await create(c, "both", environments=["env_b", "env_a"])
        assert both["statuses"] == {"env_b": "idle", "env_a": "idle"}
        # without environments: the online environment with the fewest apps (env_b: 1)
        placed = await create(c, "placed")
        assert placed["environments"] == ["env_b"]
        assert_error(
            await c.post("/api/apps", json={"name": "nowhere", "environments": ["mars"]}),
            422,
            "VALIDATION_ERROR",
            "environments",
        )
        assert (await c.get("/api/apps")).json()["apps"][-1]["name"] == "placed"
        r = await c.post("/api/apps/both/start")
        assert r.status_code == 200, r.text
        assert r.json()["statuses"] == {"env_b": "running", "env_a": "running"}
        assert set(r.json()["results"]) == {"env_a", "env_b"}


async def test_start_is_sequential_and_boots_once_per_replica(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        await create(
            c, "seq", environments=["env_a", "env_b"], options={"test": {"bootDelay": 0.4}}
        )
        results = await asyncio.gather(*(c.post("/api/apps/seq/start") for _ in range(4)))
        assert [r.status_code for r in results] == [200] * 4, [r.text for r in results]
    a, b = boots(deployed, "env_a", "seq"), boots(deployed, "env_b", "seq")
    # every replica of env_a booted once, env_b's one process once
    assert len(a) == 2 and len({pid for pid, _, _ in a}) == 2
    assert len(b) == 1
    # no two boots overlapped in time: the startup lock serialised them
    spans = sorted((began, ended) for _pid, began, ended in a + b)
    for (_, first_end), (second_begin, _) in itertools.pairwise(spans):
        assert second_begin >= first_end


async def test_records_websocket_and_blob_through_the_proxy(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        await create(c, "prox", environments=["env_a"])
        r = await c.post("/apps/prox/api/records", json={"title": "via proxy"})
        assert r.status_code == 201, r.text
        records = (await c.get("/apps/prox/api/records")).json()["records"]
        assert [x["title"] for x in records] == ["via proxy"]
        info = (await c.get("/apps/prox/api/info")).json()
        assert info["app"] == "prox" and info["environment"] == "env_a"
        page = await c.get("/apps/prox/admin")
        assert "via proxy" in page.text
        size = 10 * 1024 * 1024 + 7
        got = 0
        digest = hashlib.sha256()
        async with c.stream("GET", "/apps/prox/api/blob", params={"size": size}) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            async for chunk in r.aiter_bytes():
                got += len(chunk)
                digest.update(chunk)
        # every byte through the proxy, and the right ones: the starter's blob is all 'x'
        assert got == size
        assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
    ws_url = sup(deployed).url.replace("http", "ws") + "/apps/prox/api/echo"
    async with websockets.connect(ws_url) as ws:
        for i in range(3):
            await ws.send(f"hello {i}")
            assert await ws.recv() == f"hello {i}"
        await ws.send(b"\x00bin")
        assert await ws.recv() == b"\x00bin"


async def test_environment_choice_for_an_app_on_two_environments(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        await create(c, "pick", environments=["env_a", "env_b"])
        assert (await c.get("/apps/pick/api/info")).json()["environment"] == "env_a"
        r = await c.get("/apps/pick/api/info", headers={"X-Nocosup-Environment": "env_b"})
        assert r.json()["environment"] == "env_b"
        r = await c.get("/apps/pick/api/info", params={"__env": "env_b"})
        assert r.json()["environment"] == "env_b"
        assert_error(
            await c.get("/apps/pick/api/info", params={"__env": "mars"}),
            404,
            "ENVIRONMENT_NOT_FOUND",
        )
        assert_error(await c.get("/apps/ghost/api/info"), 404, "APP_NOT_FOUND")


async def test_killed_worker_goes_offline_and_its_apps_come_back(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        await create(c, "onb", environments=["env_b"])
        assert (await c.post("/apps/onb/api/records", json={"title": "kept"})).status_code == 201
        worker = deployed.workers["env_b"]
        worker.stop(signal.SIGKILL)
        # offline within the heartbeat TTL (3 intervals)
        await deployed.wait_environments(c, {"env_b": 0}, timeout=10)
        app = (await c.get("/api/apps/onb")).json()
        assert app["statuses"] == {"env_b": "unavailable"}
        assert_error(await c.get("/apps/onb/api/info"), 503, "APP_ENVIRONMENT_UNAVAILABLE")
        assert_error(await c.post("/api/apps/onb/start"), 503, "APP_ENVIRONMENT_UNAVAILABLE")
        # its data lives there: a delete is refused while the environment is away...
        r = await c.delete("/api/apps/onb")
        assert_error(r, 503, "APP_ENVIRONMENT_UNAVAILABLE")
        assert r.json()["error"]["results"]["env_b"]["status"] == "unavailable"
        assert (await c.get("/api/apps/onb")).status_code == 200
        worker.start()
        await deployed.wait_environments(c, {"env_b": 1})

        async def running() -> bool:
            a = (await c.get("/api/apps/onb")).json()
            return a["statuses"] == {"env_b": "running"}

        # it was running before the crash: the restarted worker boots it by itself
        await wait_for(running)
        records = (await c.get("/apps/onb/api/records")).json()["records"]
        assert [r["title"] for r in records] == ["kept"]


async def test_clean_shutdown_is_offline_at_once(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        deployed.workers["env_b"].stop(signal.SIGTERM)
        envs = {e["name"]: e for e in (await c.get("/api/environments")).json()["environments"]}
        assert envs["env_b"]["status"] == "offline"
        assert envs["env_a"]["status"] == "online"


async def test_malformed_command_is_acknowledged_and_the_worker_goes_on(
    deployed: Cluster,
) -> None:
    r = aioredis.from_url(REDIS_URL, decode_responses=True)
    stream = f"{deployed.prefix}:env:env_b:cmds"
    try:
        await r.xadd(stream, {"garbage": "yes"})
        await r.xadd(stream, {"v": "1", "id": "x1", "action": "explode", "app": "a"})
        await r.xadd(
            stream, {"v": "1", "id": "x2", "action": "start", "app": "a", "record": "{not json"}
        )

        async def all_acked() -> bool:
            groups = await r.xinfo_groups(stream)
            return bool(groups) and all(g["pending"] == 0 and g["lag"] == 0 for g in groups)

        await wait_for(all_acked)
        log = deployed.workers["env_b"].tail(200)
        assert "malformed command" in log
        async with sup(deployed).admin() as c:
            await create(c, "after", environments=["env_b"])
            assert (await c.post("/api/apps/after/start")).status_code == 200
    finally:
        await r.aclose()


async def test_command_timeout_is_504(cluster: Cluster) -> None:
    cluster.start_supervisor(NOCOSUP_COMMAND_TIMEOUT="1")
    cluster.interval = 3  # the stalled worker stays "online" for 9 s
    worker = cluster.start_worker("env_s")
    async with sup(cluster).admin() as c:
        await cluster.wait_environments(c, {"env_s": 1})
        await create(c, "stall", environments=["env_s"])
        worker.signal(signal.SIGSTOP)
        try:
            r = await c.post("/api/apps/stall/start")
            assert_error(r, 504, "COMMAND_TIMEOUT")
            assert r.json()["error"]["results"]["env_s"]["ok"] is False
        finally:
            worker.signal(signal.SIGCONT)


async def test_redis_restart_rebuilds_the_cache(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    from tests.redisserver import RedisServer

    with RedisServer(tmp_path) as private, servers:
        cluster = Cluster(servers, pg_env, redis_prefix, private.url)
        cluster.start_supervisor()
        cluster.start_worker("env_r")
        async with sup(cluster).admin() as c:
            await cluster.wait_environments(c, {"env_r": 1})
            await create(c, "durable", environments=["env_r"])
            assert (
                await c.post("/apps/durable/api/records", json={"title": "t"})
            ).status_code == 201
            private.restart()  # comes back empty

            async def recovered() -> bool:
                client = aioredis.from_url(private.url, decode_responses=True)
                try:
                    cached = await client.hgetall(f"{cluster.prefix}:apps")
                finally:
                    await client.aclose()
                app = (await c.get("/api/apps/durable")).json()
                return "durable" in cached and app.get("statuses") == {"env_r": "running"}

            await wait_for(recovered, timeout=30)

            async def served() -> httpx.Response | None:
                # the proxy routes by the watcher's snapshot of who is online, refreshed
                # every heartbeat or so: it may lag the statuses read above by a round
                r = await c.get("/apps/durable/api/records")
                return r if r.status_code == 200 else None

            records = (await wait_for(served, timeout=30)).json()["records"]
            assert [x["title"] for x in records] == ["t"]
            # commands flow again (the worker re-created its consumer group)
            r = await c.post("/api/apps/durable/stop")
            assert r.status_code == 200, r.text
            assert r.json()["statuses"] == {"env_r": "stopped"}


async def test_supervisor_restart_keeps_everything(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        await create(c, "survivor", environments=["env_a"])
        await c.post("/apps/survivor/api/records", json={"title": "persisted"})
    sup(deployed).restart()
    async with sup(deployed).admin() as c:
        await deployed.wait_environments(c, {"env_a": 2, "env_b": 1})
        records = (await c.get("/apps/survivor/api/records")).json()["records"]
        assert [x["title"] for x in records] == ["persisted"]
        r = await c.delete("/api/apps/survivor", params={"drop_database": "true"})
        assert r.status_code == 200, r.text
        assert set(r.json()["results"]) == {"env_a"}
        assert_error(await c.get("/apps/survivor/api/info"), 404, "APP_NOT_FOUND")


async def test_every_replica_takes_the_command(deployed: Cluster) -> None:
    r = aioredis.from_url(REDIS_URL, decode_responses=True)
    try:
        async with sup(deployed).admin() as c:
            await create(c, "reps", environments=["env_a"])
            assert (await c.post("/api/apps/reps/start")).status_code == 200
            fields = await r.hgetall(f"{deployed.prefix}:status:reps")
            running = [k for k, v in fields.items() if json.loads(v)["status"] == "running"]
            assert len(running) == 2 and all(k.startswith("env_a/") for k in running)
            assert (await c.post("/api/apps/reps/stop")).status_code == 200
            fields = await r.hgetall(f"{deployed.prefix}:status:reps")
            assert {json.loads(v)["status"] for v in fields.values()} == {"stopped"}
    finally:
        await r.aclose()


async def test_commands_on_their_own_redis(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    """APP_COMMAND_REDIS_URL apart from APP_SUPERVISOR_REDIS_URL: heartbeats on one,
    command streams on the other."""
    from tests.redisserver import RedisServer

    with RedisServer(tmp_path) as commands, servers:
        cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL, command_redis_url=commands.url)
        cluster.start_supervisor()
        cluster.start_worker("env_c", replicas=2)
        async with sup(cluster).admin() as c:
            await cluster.wait_environments(c, {"env_c": 2})
            await create(c, "split", environments=["env_c"])
            r = await c.post("/api/apps/split/start")
            assert r.status_code == 200, r.text
            assert r.json()["statuses"] == {"env_c": "running"}
        probe = aioredis.from_url(commands.url, decode_responses=True)
        try:
            groups = await probe.xinfo_groups(f"{cluster.prefix}:env:env_c:cmds")
            assert len(groups) == 2  # both replicas consume there, neither was reclaimed
        finally:
            await probe.aclose()


async def test_forced_delete_forgets_an_app_of_a_dead_environment(deployed: Cluster) -> None:
    async with sup(deployed).admin() as c:
        await create(c, "orphan", environments=["env_b"])
        deployed.workers["env_b"].stop(signal.SIGKILL)
        await deployed.wait_environments(c, {"env_b": 0}, timeout=10)
        r = await c.delete("/api/apps/orphan", params={"force": "true"})
        assert r.status_code == 200, r.text
        assert r.json()["results"]["env_b"]["ok"] is False
        assert_error(await c.get("/api/apps/orphan"), 404, "APP_NOT_FOUND")
        assert_error(await c.get("/apps/orphan/api/info"), 404, "APP_NOT_FOUND")
