"""Redis Sentinel: nocosup finds the master through real sentinels, follows a failover
(the master SIGKILLed under load), and its control plane recovers by itself."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nocosup.config import Settings
from nocosup.errors import ConfigError
from nocosup.redisconn import connect_redis, sentinel_target
from nocosup.redisurl import SentinelTarget, parse_sentinel_url
from tests.cluster import Cluster, wait_for
from tests.sentinel import SERVICE, SentinelSet
from tests.servers import NocosupServer, ServerFactory
from tests.test_tenants import create
from tests.test_webui import sse_events

# --- addresses -----------------------------------------------------------------------


def test_sentinel_urls_parse() -> None:
    target = parse_sentinel_url("redis+sentinel://u:p%40ss@h1:26380,h2,[::1]:1/mymaster/3", "X")
    assert target == SentinelTarget(
        sentinels=(("h1", 26380), ("h2", 26379), ("::1", 1)),
        service="mymaster",
        db=3,
        username="u",
        password="p@ss",
    )
    tls = parse_sentinel_url("rediss+sentinel://:secret@h/m", "X")
    assert tls.ssl and tls.db == 0 and tls.password == "secret" and tls.username is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APP_SUPERVISOR_REDIS_URL": "redis+sentinel://h:1"}, "service (master) name"),
        ({"APP_SUPERVISOR_REDIS_URL": "redis+sentinel://h:1/m/x"}, "database number"),
        ({"APP_SUPERVISOR_REDIS_URL": "redis+sentinel://h:1/m/1/2"}, "service (master) name"),
        ({"APP_COMMAND_REDIS_URL": "redis+sentinel://h:99999/m"}, "APP_COMMAND_REDIS_URL"),
        ({"APP_SUPERVISOR_REDIS_URL": "redis+sentinel://,/m"}, "host[:port]"),
        ({"NOCOSUP_REDIS_SENTINELS": "h:1"}, "go together"),
        ({"NOCOSUP_REDIS_SENTINEL_MASTER": "m"}, "go together"),
        (
            {
                "NOCOSUP_REDIS_SENTINELS": "h:1",
                "NOCOSUP_REDIS_SENTINEL_MASTER": "m",
                "APP_SUPERVISOR_REDIS_URL": "unix:///run/redis.sock",
            },
            "must be redis:// or rediss://",
        ),
    ],
)
def test_bad_sentinel_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_passwords_stay_out_of_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"APP_SUPERVISOR_REDIS_URL": "redis+sentinel://:hunter2@h:1"})
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)


def test_sentinel_variables_route_plain_urls() -> None:
    settings = Settings.from_env(
        {
            "NOCOSUP_REDIS_SENTINELS": "s1:5000, s2",
            "NOCOSUP_REDIS_SENTINEL_MASTER": "main",
            "APP_SUPERVISOR_REDIS_URL": "rediss://:pw@ignored:6379/4",
        }
    )
    assert settings.supervisor_redis_url is not None
    target = sentinel_target(settings.supervisor_redis_url, "X", settings)
    assert target == SentinelTarget((("s1", 5000), ("s2", 26379)), "main", 4, None, "pw", True)
    assert sentinel_target("redis://h/0", "X", Settings()) is None


# --- a real failover -------------------------------------------------------------------


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path / "sentinel") as deployment:
        yield deployment


async def _retry(call: object, timeout: float = 30) -> object:
    """``call()`` until it stops failing with a Redis error (the client reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()  # type: ignore[operator]
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_client_follows_the_master_through_a_failover(sentinels: SentinelSet) -> None:
    client = await connect_redis(sentinels.url, "APP_SUPERVISOR_REDIS_URL")
    try:
        await client.set("kept", "1")
        sentinels.wait_replicated("a")
        old = sentinels.kill_master()
        new = sentinels.wait_failover(old)
        assert new != old
        # the same client object: it asks the sentinel again when its connection breaks
        assert await _retry(lambda: client.get("kept")) == "1"
        await _retry(lambda: client.set("after", "2"))
        direct = aioredis.from_url(f"redis://127.0.0.1:{sentinels.ports[new]}/0")
        try:
            assert await direct.get("after") == b"2"
        finally:
            await direct.aclose()
    finally:
        await client.aclose()


async def test_unreachable_sentinels_fail_the_start_clearly(tmp_path: Path) -> None:
    from tests.servers import free_port

    with pytest.raises(ConfigError, match="cannot reach Redis"):
        await connect_redis(f"redis+sentinel://127.0.0.1:{free_port()}/{SERVICE}", "X")


@pytest.fixture
async def cluster(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, sentinels: SentinelSet
) -> AsyncIterator[Cluster]:
    with servers:  # stopped before the sentinels are
        cluster = Cluster(servers, pg_env, redis_prefix, sentinels.url)
        cluster.start_supervisor(NOCOSUP_COMMAND_TIMEOUT="10")
        cluster.start_worker("env_a")
        async with sup(cluster).admin() as c:
            await cluster.wait_environments(c, {"env_a": 1})
        yield cluster


def sup(cluster: Cluster) -> NocosupServer:
    assert cluster.supervisor is not None
    return cluster.supervisor


async def test_cluster_recovers_from_a_failover_under_load(
    cluster: Cluster, sentinels: SentinelSet
) -> None:
    async with sup(cluster).admin() as c:
        await create(c, "shop")
        await create(c, "blog")
        assert (await c.post("/api/apps/shop/start")).status_code == 200
        sentinels.wait_replicated("a")

        outcomes: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with sup(cluster).client() as anon:
                while not stop.is_set():
                    try:
                        r = await anon.get("/apps/shop/api/info", timeout=10)
                        outcomes.append(r.status_code)
                    except httpx.HTTPError:
                        outcomes.append(0)
                    await asyncio.sleep(0.02)

        loader = asyncio.create_task(load())
        try:
            await asyncio.sleep(0.5)
            began = time.monotonic()
            old = sentinels.kill_master()
            sentinels.wait_failover(old)
            failover = time.monotonic() - began

            # commands flow again through the new master: start a second app
            async def started() -> bool:
                r = await c.post("/api/apps/blog/start")
                return r.status_code == 200

            await wait_for(started, timeout=60, interval=0.5)
            recovered = time.monotonic() - began

            # the environment is online and the app's status is reported again
            async def env_online() -> bool:
                r = await c.get("/api/environments")
                return r.status_code == 200 and any(
                    e["name"] == "env_a" and e["status"] == "online"
                    for e in r.json()["environments"]
                )

            await wait_for(env_online, timeout=30)

            async def shop_running() -> bool:
                r = await c.get("/api/apps/shop")
                return r.status_code == 200 and r.json()["statuses"] == {"env_a": "running"}

            await wait_for(shop_running, timeout=30)
            served_after = len(outcomes)
            await asyncio.sleep(1)
        finally:
            stop.set()
            await loader
        # tenant traffic never stopped being served for good, and is served now
        assert 200 in outcomes[served_after:]
        assert set(outcomes[served_after:]) == {200}, outcomes[served_after:]
        failed = sum(1 for o in outcomes if o != 200)
        print(
            f"failover {failover:.1f} s, commands again after {recovered:.1f} s, "
            f"{failed} of {len(outcomes)} tenant requests failed meanwhile "
            f"({sorted(Counter(outcomes).items())})"
        )
        # the stopped-then-started state of both apps holds through the new master
        r = await c.get("/api/apps")
        statuses = {a["name"]: a["statuses"] for a in r.json()["apps"]}
        assert statuses == {"blog": {"env_a": "running"}, "shop": {"env_a": "running"}}


async def test_cluster_recovers_when_the_master_freezes(
    cluster: Cluster, sentinels: SentinelSet
) -> None:
    """A master that stops answering without closing its sockets (a paused VM, a network
    partition): the sentinel promotes the replica, and every client blocked on the frozen
    master must give up on it and reconnect, or the control plane hangs for as long as
    the master stays frozen (TCP alone would wait for many minutes)."""
    async with sup(cluster).admin() as c:
        await create(c, "shop")
        await create(c, "blog")
        assert (await c.post("/api/apps/shop/start")).status_code == 200
        sentinels.wait_replicated("a")
        async with c.stream("GET", "/api/events", timeout=120) as stream:
            statuses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

            async def read() -> None:
                async for kind, data in sse_events(stream):
                    if kind == "app_status" and data.get("app") == "blog":
                        statuses.put_nowait(data)

            reader = asyncio.create_task(read())
            began = time.monotonic()
            old = sentinels.freeze_master()
            sentinels.wait_failover(old)

            # commands flow again: the consumers gave up on the frozen master
            async def started() -> bool:
                r = await c.post("/api/apps/blog/start", timeout=30)
                return r.status_code == 200

            await wait_for(started, timeout=60, interval=0.5)
            recovered = time.monotonic() - began

            # the workers' status reports reach the page's stream again: the event
            # subscription was given up and made on the new master (a report published
            # while it was still on the frozen one is lost, as pub/sub messages are)
            async def reported() -> bool:
                while not statuses.empty():
                    statuses.get_nowait()
                action = "stop" if await _status(c, "blog") == "running" else "start"
                assert (await c.post(f"/api/apps/blog/{action}", timeout=30)).status_code == 200
                try:
                    async with asyncio.timeout(3):
                        await statuses.get()
                except TimeoutError:
                    return False
                return True

            try:
                await wait_for(reported, timeout=60)
            finally:
                reader.cancel()
            assert (await c.post("/api/apps/blog/start", timeout=30)).status_code == 200

        async def env_online_and_running() -> bool:
            envs = await c.get("/api/environments")
            apps = await c.get("/api/apps")
            return (
                any(
                    e["name"] == "env_a" and e["status"] == "online"
                    for e in envs.json()["environments"]
                )
                and {a["name"]: a["statuses"] for a in apps.json()["apps"]}
                == {"blog": {"env_a": "running"}, "shop": {"env_a": "running"}}
            )

        await wait_for(env_online_and_running, timeout=60)
        async with sup(cluster).client() as anon:
            assert (await anon.get("/apps/shop/api/info")).status_code == 200
        print(f"master frozen: commands went through again after {recovered:.1f} s")


async def _status(c: httpx.AsyncClient, app: str) -> str | None:
    r = await c.get(f"/api/apps/{app}")
    status: str | None = r.json()["statuses"].get("env_a")
    return status
