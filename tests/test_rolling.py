"""A rolling restart of every worker under load, with real processes: an app on two
environments loses no request (the supervisor sends a request the restarting one did not
take to the other); an app on one environment gets only 503 with Retry-After while its
environment restarts, and serves again after. The 503 window is measured and printed.

Then the rules of that fallback, deterministic: the proxy against raw upstreams that
refuse or answer 503 SHUTTING_DOWN, and the supervisor with an environment that is dead
but still registered (a long heartbeat TTL): an explicit environment choice never falls
back, a streamed body is never replayed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.servers import ServerFactory, free_port
from tests.test_admin_api import assert_error
from tests.test_proxy import PREFIX, ProxyServer, answer, raw_upstream, read_head
from tests.test_tenants import create

LOADERS = 4


@dataclass
class Load:
    """What the load loop saw, per app: every failure (status or exception) and when."""

    served: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list[tuple[float, str, httpx.Response | None]]] = field(
        default_factory=dict
    )
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, client: httpx.AsyncClient, apps: list[str]) -> None:
        while not self.stop.is_set():
            for app in apps:
                try:
                    resp = await client.get(f"/apps/{app}/api/info")
                except httpx.HTTPError as exc:
                    self.failures.setdefault(app, []).append((time.monotonic(), repr(exc), None))
                    continue
                if resp.status_code == 200:
                    self.served[app] = self.served.get(app, 0) + 1
                else:
                    seen = (time.monotonic(), f"{resp.status_code} {resp.text[:200]}", resp)
                    self.failures.setdefault(app, []).append(seen)


async def test_rolling_restart_of_every_worker_under_load(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor()
    cluster.start_worker("env_a")
    cluster.start_worker("env_b")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
        await create(c, "rollboth", environments=["env_a", "env_b"])
        await create(c, "rollone", environments=["env_a"])
        for app in ("rollboth", "rollone"):
            started = await c.post(f"/api/apps/{app}/start")
            assert started.status_code == 200, started.text

    load = Load()
    apps = ["rollboth", "rollone"]
    redis = aioredis.from_url(REDIS_URL, decode_responses=True)
    async with httpx.AsyncClient(base_url=supervisor.url, timeout=60) as client:
        for app in apps:
            assert (await client.get(f"/apps/{app}/api/info")).status_code == 200
        loaders = [asyncio.create_task(load.run(client, apps)) for _ in range(LOADERS)]
        try:
            for name in ("env_a", "env_b"):
                worker = cluster.workers[name]
                before = dict(load.served)
                pattern = f"{cluster.prefix}:env:{name}:inst:*"
                instances = [k async for k in redis.scan_iter(match=pattern)]
                assert instances, "the worker registered a heartbeat key"
                code = await asyncio.to_thread(worker.stop, signal.SIGTERM)
                assert code in (0, -signal.SIGTERM), worker.tail()
                # it deregistered on its way out: no heartbeat key waits for its TTL
                assert not await redis.exists(*instances)
                await asyncio.to_thread(worker.start)
                async with supervisor.admin() as c:
                    await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})

                async def served_again(before: dict[str, int] = before) -> bool:
                    return all(load.served.get(a, 0) > before.get(a, 0) for a in apps)

                await wait_for(served_again, timeout=60)
                for app in apps:  # it serves after each restart
                    assert (await client.get(f"/apps/{app}/api/info")).status_code == 200
        finally:
            load.stop.set()
            await asyncio.gather(*loaders)
            await redis.aclose()

    assert load.failures.get("rollboth", []) == [], load.failures["rollboth"][:5]
    failures = load.failures.get("rollone", [])
    for _when, what, resp in failures:
        assert resp is not None, what  # never a connection error or a cut response
        assert resp.status_code == 503, what
        assert resp.headers.get("retry-after"), what
        assert resp.json()["error"]["code"] in {"APP_ENVIRONMENT_UNAVAILABLE", "SHUTTING_DOWN"}
    window = failures[-1][0] - failures[0][0] if failures else 0.0
    print(
        f"\nrolling restart: {load.served} served; two-environment app 0 failed; "
        f"single-environment app {len(failures)} x 503 over a {window:.2f} s window"
    )


# --------------------------------------------------------------- the fallback's rules

SHUTTING_DOWN = json.dumps(
    {"error": {"code": "SHUTTING_DOWN", "message": "this server is shutting down"}}
).encode()


class FallbackServer(ProxyServer):
    """The test proxy, with a fallback to ``second`` that counts its calls."""

    def __init__(self, first: str, second: str | None) -> None:
        super().__init__(first)
        self.second = second
        self.fallbacks = 0

    def fallback(self) -> str | None:
        self.fallbacks += 1
        return self.second

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope = dict(scope)
        scope["root_path"] = PREFIX
        await self.proxy.forward(self.upstream, scope, receive, send, fallback=self.fallback)


@contextlib.asynccontextmanager
async def fallback_server(first: str, second: str | None) -> AsyncIterator[FallbackServer]:
    server = FallbackServer(first, second)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def echo_upstream(seen: list[bytes]) -> AsyncIterator[str]:
    """An upstream that answers 200 with the request body it read (Content-Length)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        seen.append(head + body)
        writer.write(
            answer(b"HTTP/1.1 200 OK", b"Content-Length: %d" % (len(body) + 2), body=b"ok" + body)
        )
        await writer.drain()

    async with raw_upstream(handler) as url:
        yield url


@contextlib.asynccontextmanager
async def status_upstream(status: bytes, body: bytes, seen: list[bytes]) -> AsyncIterator[str]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(
            answer(
                status,
                b"Content-Type: application/json",
                b"Retry-After: 2",
                b"Content-Length: %d" % len(body),
                body=body,
            )
        )
        await writer.drain()

    async with raw_upstream(handler) as url:
        yield url


def refusing_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


async def test_a_refused_request_goes_once_to_the_fallback_with_its_body() -> None:
    seen: list[bytes] = []
    async with echo_upstream(seen) as second, fallback_server(refusing_url(), second) as proxy:
        async with proxy.http() as c:
            got = await c.get(PREFIX + "/x")
            assert (got.status_code, got.content) == (200, b"ok")
            posted = await c.post(PREFIX + "/x", content=b"payload")
            assert (posted.status_code, posted.content) == (200, b"okpayload")
    assert proxy.fallbacks == 2 and len(seen) == 2
    assert seen[1].startswith(b"POST /apps/demo/x HTTP/1.1") and seen[1].endswith(b"payload")


async def test_a_streamed_body_is_never_replayed() -> None:
    seen: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"part1"
        await asyncio.sleep(0)
        yield b"part2"

    async with echo_upstream(seen) as second, fallback_server(refusing_url(), second) as proxy:
        async with proxy.http() as c:
            resp = await c.post(PREFIX + "/x", content=body())
    assert_error(resp, 502, "UPSTREAM_CONNECT_ERROR")
    assert proxy.fallbacks == 0 and seen == []


async def test_a_draining_upstream_s_503_goes_to_the_fallback_other_503s_do_not() -> None:
    drained: list[bytes] = []
    served: list[bytes] = []
    async with (
        status_upstream(b"HTTP/1.1 503 Service Unavailable", SHUTTING_DOWN, drained) as first,
        echo_upstream(served) as second,
        fallback_server(first, second) as proxy,
        proxy.http() as c,
    ):
        got = await c.get(PREFIX + "/x")
        assert (got.status_code, got.content) == (200, b"ok")
    assert proxy.fallbacks == 1 and len(drained) == 1 and len(served) == 1

    busy = json.dumps({"error": {"code": "APP_OVERLOADED", "message": "busy"}}).encode()
    async with (
        status_upstream(b"HTTP/1.1 503 Service Unavailable", busy, drained) as first,
        echo_upstream(served) as second,
        fallback_server(first, second) as proxy,
        proxy.http() as c,
    ):
        assert_error(await c.get(PREFIX + "/x"), 503, "APP_OVERLOADED")
    assert proxy.fallbacks == 0 and len(served) == 1


async def test_the_fallback_is_tried_once_and_may_have_nothing() -> None:
    async with fallback_server(refusing_url(), refusing_url()) as proxy, proxy.http() as c:
        assert_error(await c.get(PREFIX + "/x"), 502, "UPSTREAM_CONNECT_ERROR")
    assert proxy.fallbacks == 1
    async with fallback_server(refusing_url(), None) as proxy, proxy.http() as c:
        assert_error(await c.get(PREFIX + "/x"), 502, "UPSTREAM_CONNECT_ERROR")
    assert proxy.fallbacks == 1


async def test_the_supervisor_falls_back_unless_the_environment_was_chosen(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    # a long heartbeat TTL: a killed env_a stays registered (online) for the whole test
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL, interval=30)
    supervisor = cluster.start_supervisor()
    env_a = cluster.start_worker("env_a")
    cluster.start_worker("env_b")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
        await create(c, "fallboth", environments=["env_a", "env_b"])
        await create(c, "fallone", environments=["env_a"])
        for app in ("fallboth", "fallone"):
            assert (await c.post(f"/api/apps/{app}/start")).status_code == 200
    env_a.stop(signal.SIGKILL)  # no deregistration: env_a looks online but refuses
    async with supervisor.admin() as c:
        envs = {e["name"]: e for e in (await c.get("/api/environments")).json()["environments"]}
        assert envs["env_a"]["status"] == "online"
    async with supervisor.client() as c:
        got = await c.get("/apps/fallboth/api/info")
        assert got.status_code == 200 and got.json()["environment"] == "env_b", got.text
        created = await c.post("/apps/fallboth/api/records", json={"title": "replayed"})
        assert created.status_code == 201, created.text
        for chosen in (
            {"headers": {"X-Nocosup-Environment": "env_a"}},
            {"params": {"__env": "env_a"}},
        ):
            resp = await c.get("/apps/fallboth/api/info", **chosen)  # type: ignore[arg-type]
            assert_error(resp, 503, "APP_ENVIRONMENT_UNAVAILABLE")
            assert "not accepting connections" in resp.json()["error"]["message"]
        alone = await c.get("/apps/fallone/api/info")
        assert_error(alone, 503, "APP_ENVIRONMENT_UNAVAILABLE")
        assert alone.headers["retry-after"]


async def test_a_request_to_an_environment_that_goes_offline_goes_to_the_next(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL, interval=30)
    supervisor = cluster.start_supervisor()
    env_a = cluster.start_worker("env_a")
    cluster.start_worker("env_b")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1, "env_b": 1})
        await create(c, "rescued", environments=["env_a", "env_b"])
        assert (await c.post("/api/apps/rescued/start")).status_code == 200
    redis = aioredis.from_url(REDIS_URL, decode_responses=True)
    env_a.signal(signal.SIGSTOP)  # frozen: the request waits on it
    try:
        async with supervisor.client() as c, supervisor.admin() as admin:
            held = asyncio.create_task(c.get("/apps/rescued/api/info"))

            async def in_flight() -> bool:
                text = (await admin.get("/metrics")).text
                return any(
                    line.startswith("nocosup_requests_in_flight")
                    and 'app="rescued"' in line
                    and line.endswith(" 1.0")
                    for line in text.splitlines()
                )

            await wait_for(in_flight)
            # its heartbeat expires (deleted here: the TTL is long): the supervisor aborts
            pattern = f"{cluster.prefix}:env:env_a:inst:*"
            await redis.delete(*[k async for k in redis.scan_iter(match=pattern)])
            got = await held
            assert got.status_code == 200, got.text
            assert got.json()["environment"] == "env_b"
    finally:
        env_a.signal(signal.SIGCONT)
        await redis.aclose()
