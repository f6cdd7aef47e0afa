"""Redis writers cannot stop the control plane: every repro of findings 3 (a poison
command) and 5 (malformed Redis data) against a real cluster (a supervisor and workers
as uvicorn processes, real Redis and PostgreSQL), then the system recovering by itself."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.inproc import InProc
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create


@pytest.fixture
async def cluster(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> AsyncIterator[Cluster]:
    """Supervisor + env_a + env_b (one process each), all registered."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    cluster.start_supervisor()
    cluster.start_worker("env_a")
    cluster.start_worker("env_b")
    async with sup(cluster).admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
    yield cluster


@pytest.fixture
async def r() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


def sup(cluster: Cluster) -> NocosupServer:
    assert cluster.supervisor is not None
    return cluster.supervisor


async def instance_of(c: httpx.AsyncClient, env: str) -> str:
    envs = {e["name"]: e for e in (await c.get("/api/environments")).json()["environments"]}
    (instance,) = envs[env]["instances"]
    return f"{env}/{instance}"


async def restart_killed(cluster: Cluster, c: httpx.AsyncClient, env: str) -> None:
    """kill -9 the worker of ``env`` and start it again (a new instance id)."""
    worker = cluster.workers[env]
    worker.stop(signal.SIGKILL)
    worker.start()  # waits for its /readyz: it starts at all
    await cluster.wait_environments(c, {env: 1})


async def statuses_are(c: httpx.AsyncClient, app: str, expected: dict[str, str]) -> bool:
    r = await c.get("/api/apps")
    assert r.status_code == 200, r.text
    return {a["name"]: a["statuses"] for a in r.json()["apps"]}.get(app) == expected


# --- finding 3: one poison command ------------------------------------------------------


async def test_poison_command_is_dead_lettered_and_commands_still_flow(
    cluster: Cluster, r: aioredis.Redis
) -> None:
    p = cluster.prefix
    await r.xadd(
        f"{p}:env:env_a:cmds",
        {"v": "1", "action": "ping", "app": "x", "id": "g5", "reply_to": f"{p}:meta"},
    )
    async with sup(cluster).admin() as c:
        await restart_killed(cluster, c, "env_a")
        # commands are answered: the consumer lives
        await create(c, "afterpoison", environments=["env_a"])
        started = await c.post("/api/apps/afterpoison/start")
        assert started.status_code == 200, started.text
        assert started.json()["statuses"] == {"env_a": "running"}
        async with cluster.workers["env_a"].client() as w:
            ready = await w.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["commands"] is True
        # the poison is a dead letter, shown with its environment
        env = (await c.get("/api/environments/env_a")).json()
        assert env["name"] == "env_a" and env["status"] == "online"
        dead = env["dead_letters"]
        assert dead["count"] == 1
        (letter,) = dead["recent"]
        assert "is not a reply stream" in letter["reason"]
        assert letter["action"] == "ping" and letter["app"] == "x" and letter["at"]
        assert (await c.get("/api/environments/env_b")).json()["dead_letters"]["count"] == 0
        assert_error(await c.get("/api/environments/mars"), 404, "ENVIRONMENT_NOT_FOUND")
        assert_error(await c.get("/api/environments/a:b*"), 404, "ENVIRONMENT_NOT_FOUND")
    # nothing was written to the key named as reply_to
    assert set(await r.hkeys(f"{p}:meta")) <= {"schema", "built_at", "count"}
    async with sup(cluster).client() as anonymous:
        assert_error(await anonymous.get("/api/environments/env_a"), 401, "UNAUTHORIZED")


async def test_worker_readyz_reports_a_consumer_that_cannot_read_commands(
    cluster: Cluster, r: aioredis.Redis
) -> None:
    stream = f"{cluster.prefix}:env:env_b:cmds"
    worker = cluster.workers["env_b"]
    async with worker.client() as w:

        async def unready() -> httpx.Response | None:
            resp = await w.get("/readyz")
            return resp if resp.status_code == 503 else None

        async def ready() -> bool:
            return (await w.get("/readyz")).status_code == 200

        await r.delete(stream)
        await r.set(stream, "not a stream")
        resp = await wait_for(unready)
        assert resp.status_code == 503
        reason = resp.json()["checks"]["commands"]
        assert "command consumer cannot read commands" in reason and "WRONGTYPE" in reason
        await r.delete(stream)
        await wait_for(ready)
    async with sup(cluster).admin() as c:
        await create(c, "readable", environments=["env_b"])
        assert (await c.post("/api/apps/readable/start")).status_code == 200


# --- finding 5: malformed Redis data ----------------------------------------------------


async def test_unreadable_status_fields_neither_fail_the_api_nor_the_worker(
    cluster: Cluster, r: aioredis.Redis
) -> None:
    key = f"{cluster.prefix}:status:stat"
    async with sup(cluster).admin() as c:
        await create(c, "stat", environments=["env_b"])
        assert (await c.post("/api/apps/stat/start")).status_code == 200
        live = await instance_of(c, "env_b")
        await r.hset(key, live, "{not json")
        await r.hset(key, "env_b/ghost", "[1]")
        r1 = await c.get("/api/apps")
        assert r1.status_code == 200, r1.text
        assert (await c.get("/api/apps/stat")).status_code == 200
        # repaired: the bad fields are gone, the live worker wrote its status again

        async def repaired() -> bool:
            fields = await r.hgetall(key)
            return "env_b/ghost" not in fields and await statuses_are(
                c, "stat", {"env_b": "running"}
            )

        await wait_for(repaired)
        assert json.loads((await r.hgetall(key))[live])["status"] == "running"
        # a worker starting with unreadable statuses of its environment starts
        await r.hset(key, "env_b/ghost", "{not json")
        await restart_killed(cluster, c, "env_b")
        info = await c.get("/apps/stat/api/info")
        assert info.status_code == 200, info.text
        # a status key of the wrong type is replaced too
        await r.delete(key)
        await r.set(key, "not a hash")
        assert (await c.get("/api/apps")).status_code == 200

        async def rewritten() -> bool:
            return await r.type(key) == "hash" and await statuses_are(
                c, "stat", {"env_b": "running"}
            )

        await wait_for(rewritten)


async def test_bad_cache_records_are_skipped_by_workers_and_repaired(
    cluster: Cluster, r: aioredis.Redis
) -> None:
    apps = f"{cluster.prefix}:apps"
    async with sup(cluster).admin() as c:
        for name in ("good1", "good2"):
            await create(c, name, environments=["env_b"])
        # a record overwritten with garbage (the count stays right), one of another app
        await r.hset(apps, "good1", "garbage")
        good2 = json.loads(await r.hget(apps, "good2"))
        await r.hset(apps, "good2", json.dumps({**good2, "name": "good1"}))
        await restart_killed(cluster, c, "env_b")  # started: bad records are skipped
        for name in ("good1", "good2"):

            async def serves(name: str = name) -> bool:
                return (await c.get(f"/apps/{name}/api/info")).status_code == 200

            await wait_for(serves)
        # an invalid name added behind the supervisor's back: the count disagrees

        async def rebuilt() -> bool:
            meta = await r.hgetall(f"{cluster.prefix}:meta")
            cached = await r.hgetall(apps)
            return (
                set(cached) == {"good1", "good2"}
                and meta.get("count") == "2"
                and all(json.loads(v)["name"] == k for k, v in cached.items())
            )

        await r.hset(apps, "Not A Name", "{}")
        await wait_for(rebuilt)


async def test_deleted_apps_hash_is_rebuilt_while_meta_survives(
    cluster: Cluster, r: aioredis.Redis
) -> None:
    async with sup(cluster).admin() as c:
        await create(c, "keep", environments=["env_a"])
        assert (await c.post("/api/apps/keep/start")).status_code == 200
        await r.delete(f"{cluster.prefix}:apps")
        assert await r.exists(f"{cluster.prefix}:meta")
        await restart_killed(cluster, c, "env_a")

        async def serves() -> bool:
            return (await c.get("/apps/keep/api/info")).status_code == 200

        await wait_for(serves)
        assert set(await r.hkeys(f"{cluster.prefix}:apps")) == {"keep"}
        # it ran before the crash: the restarted worker booted it again by itself
        await wait_for(lambda: statuses_are(c, "keep", {"env_a": "running"}))


async def test_the_watcher_survives_wrong_types_and_scores(
    cluster: Cluster, r: aioredis.Redis
) -> None:
    p = cluster.prefix
    async with sup(cluster).admin() as c:
        await create(c, "onb", environments=["env_b"])
        await r.delete(f"{p}:env:env_b")
        await r.set(f"{p}:env:env_b", "not a hash")
        await r.zadd(f"{p}:instances", {"env_b/ghost": 1e20, "no-slash": 1.0})
        cluster.workers["env_b"].stop(signal.SIGKILL)
        # the killed worker is marked offline, and no longer routed to
        envs = await cluster.wait_environments(c, {"env_b": 0, "env_a": 1})
        assert envs["env_b"]["status"] == "offline"
        assert_error(await c.get("/apps/onb/api/info"), 503, "APP_ENVIRONMENT_UNAVAILABLE")
        assert await r.zscore(f"{p}:instances", "env_b/ghost") is None
        assert await r.zscore(f"{p}:instances", "no-slash") is None
        assert await r.type(f"{p}:env:env_b") != "string"
        # wrong-typed directory keys are replaced as well; the workers fill them again
        await r.delete(f"{p}:envs", f"{p}:instances")
        await r.set(f"{p}:envs", "x")
        await r.set(f"{p}:instances", "x")
        cluster.workers["env_b"].start()
        await cluster.wait_environments(c, {"env_b": 1, "env_a": 1})
        assert await r.type(f"{p}:envs") == "set"
        assert await r.type(f"{p}:instances") == "zset"
        assert (await c.get("/apps/onb/api/info")).status_code == 200


async def test_environment_route_in_shared_memory_mode(inproc: InProc) -> None:
    async with inproc.admin() as c:
        env = (await c.get("/api/environments/local")).json()
        assert env["name"] == "local" and env["status"] == "online"
        assert env["dead_letters"] is None  # no command stream in this mode
        assert_error(await c.get("/api/environments/mars"), 404, "ENVIRONMENT_NOT_FOUND")
    async with inproc.client() as anonymous:
        assert_error(await anonymous.get("/api/environments/local"), 401, "UNAUTHORIZED")


def test_only_http_urls_are_taken_from_environment_hashes() -> None:
    from nocosup.remote import _http_url

    assert _http_url("http://127.0.0.1:8001") and _http_url("https://env-a.internal")
    for bad in ("javascript:alert(1)", "file:///etc/passwd", "http://", "127.0.0.1:80", "x"):
        assert not _http_url(bad)
