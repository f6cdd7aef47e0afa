"""Scale to zero, capacity, boot admission and fair share (issue 10, items 1-4), with real
parts: ``nocosup serve`` processes (shared memory and a supervisor with a worker behind
Redis), the in-process host where the test must see inside the runtime."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from redis.exceptions import ResponseError

from nocosup.admission import RequestGate
from nocosup.lastseen import latest_by_environment
from nocosup.registry import iso_time
from nocosup.runtime import LocalRuntime
from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.inproc import InProc, inproc_settings, running_host
from tests.servers import ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create


def builds(storage: Path, app: str) -> int:
    path = storage / "apps" / app / "builds.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def status_of(c: httpx.AsyncClient, app: str, env: str) -> str:
    r = await c.get(f"/api/apps/{app}")
    assert r.status_code == 200, r.text
    status: str = r.json()["statuses"][env]
    return status


async def wait_status(c: httpx.AsyncClient, app: str, env: str, wanted: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        r = await c.get(f"/api/apps/{app}")
        body: dict[str, Any] = r.json()
        return body if body["statuses"][env] == wanted else None

    result: dict[str, Any] = await wait_for(reached)
    return result


async def ws_echo(url: str, text: str) -> str:
    async with websockets.connect(url) as ws:
        await ws.send(text)
        answer = await ws.recv()
    assert isinstance(answer, str)
    return answer


def runtime_of(server: InProc) -> LocalRuntime:
    runtime = getattr(server.host.role, "runtime", None)
    assert isinstance(runtime, LocalRuntime)
    return runtime


# --- scale to zero: shared memory ---------------------------------------------------------


async def test_idle_app_wakes_on_http_and_websocket_in_shared_memory(
    servers: ServerFactory,
) -> None:
    server = servers.start()
    ws_url = server.url.replace("http", "ws") + "/apps/nap/api/echo"
    async with server.admin() as c:
        app = await create(c, "nap", options={"idleTimeout": 1})
        # created, never booted: wanted running, so idle (not stopped)
        assert app["statuses"] == {"local": "idle"}
        assert app["last_seen_at"] == {"local": None}
        assert (await c.get("/apps/nap/api/info")).status_code == 200
        assert await status_of(c, "nap", "local") == "running"

        idle = await wait_status(c, "nap", "local", "idle")
        assert idle["desired_state"] == "running"
        assert idle["errors"] == {}  # the lifespan was left cleanly
        assert idle["last_seen_at"]["local"] is not None
        assert builds(server.storage, "nap") == 1

        # the next HTTP request boots it again and is answered
        r = await c.get("/apps/nap/api/info")
        assert r.status_code == 200, r.text
        assert r.json()["app"] == "nap"
        assert builds(server.storage, "nap") == 2

        # and so is the next WebSocket
        await wait_status(c, "nap", "local", "idle")
        assert await ws_echo(ws_url, "wake up") == "wake up"
        assert builds(server.storage, "nap") == 3

        # an open WebSocket is traffic: the app stays up while it lasts
        async with websockets.connect(ws_url) as ws:
            for i in range(3):
                await ws.send(f"still here {i}")
                assert await ws.recv() == f"still here {i}"
                await asyncio.sleep(1)
            assert await status_of(c, "nap", "local") == "running"
        await wait_status(c, "nap", "local", "idle")


async def test_stopped_app_is_not_woken(servers: ServerFactory) -> None:
    server = servers.start()
    async with server.admin() as c:
        await create(c, "held", options={"idleTimeout": 1})
        assert (await c.get("/apps/held/api/info")).status_code == 200
        await wait_status(c, "held", "local", "idle")
        r = await c.post("/api/apps/held/stop")
        assert r.status_code == 200, r.text
        assert r.json()["statuses"] == {"local": "stopped"}
        assert_error(await c.get("/apps/held/api/info"), 503, "APP_STOPPED")
        assert await status_of(c, "held", "local") == "stopped"
        assert builds(server.storage, "held") == 1
        # an explicit start makes it wanted again
        assert (await c.post("/api/apps/held/start")).status_code == 200
        assert (await c.get("/apps/held/api/info")).status_code == 200


async def test_idle_timeout_is_validated(inproc: InProc) -> None:
    c = inproc.api
    for bad in (-1, "10", True, 30 * 86400 + 1):
        r = await c.post("/api/apps", json={"name": "bad", "options": {"idleTimeout": bad}})
        assert_error(r, 422, "VALIDATION_ERROR", "options.idleTimeout")
    for key, bad in (("maxConcurrency", 0), ("maxConcurrency", 1.5), ("maxQueue", -1)):
        options = {"maxConcurrency": 2, key: bad}
        r = await c.post("/api/apps", json={"name": "bad", "options": options})
        assert_error(r, 422, "VALIDATION_ERROR", f"options.{key}")
    r = await c.post("/api/apps", json={"name": "bad", "options": {"maxQueue": 3}})
    assert_error(r, 422, "VALIDATION_ERROR", "options.maxQueue")
    await create(c, "fine", options={"idleTimeout": 0.5, "maxConcurrency": 2, "maxQueue": 0})
    r = await c.patch("/api/apps/fine", json={"options": {"idleTimeout": "soon"}})
    assert_error(r, 422, "VALIDATION_ERROR", "options.idleTimeout")


async def test_default_idle_timeout_comes_from_the_environment(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_IDLE_TIMEOUT="1")
    async with running_host(settings) as server:
        c = server.api
        await create(c, "sleepy")
        await create(c, "awake", options={"idleTimeout": 0})
        for name in ("sleepy", "awake"):
            assert (await c.get(f"/apps/{name}/api/info")).status_code == 200
        await wait_status(c, "sleepy", "local", "idle")
        # idleTimeout 0 wins over the default: never idle (the other one went meanwhile)
        assert await status_of(c, "awake", "local") == "running"


# --- scale to zero: through the proxy -----------------------------------------------------


@pytest.fixture
async def one_worker(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> AsyncIterator[Cluster]:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    cluster.start_supervisor()
    cluster.start_worker("env_a")
    assert cluster.supervisor is not None
    async with cluster.supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
    yield cluster


async def test_idle_app_wakes_through_the_proxy(one_worker: Cluster) -> None:
    sup = one_worker.supervisor
    assert sup is not None
    storage = one_worker.workers["env_a"].storage
    ws_url = sup.url.replace("http", "ws") + "/apps/far/api/echo"
    async with sup.admin() as c:
        app = await create(c, "far", environments=["env_a"], options={"idleTimeout": 1})
        assert app["statuses"] == {"env_a": "idle"}
        assert app["last_seen_at"] == {"env_a": None}
        assert (await c.get("/apps/far/api/info")).status_code == 200
        idle = await wait_status(c, "far", "env_a", "idle")
        assert idle["desired_state"] == "running" and idle["errors"] == {}

        async def seen() -> str | None:
            value: str | None = (await c.get("/api/apps/far")).json()["last_seen_at"]["env_a"]
            return value

        first_seen = await wait_for(seen)

        r = await c.get("/apps/far/api/info")
        assert r.status_code == 200, r.text
        assert r.json()["environment"] == "env_a"
        assert builds(storage, "far") == 2

        await wait_status(c, "far", "env_a", "idle")
        assert await ws_echo(ws_url, "through the proxy") == "through the proxy"
        assert builds(storage, "far") == 3

        async def seen_later() -> str | None:
            value = await seen()
            return value if value is not None and value > first_seen else None

        await wait_for(seen_later)  # the worker's batches carry the newer requests

        # stopped through the API: the proxy does not wake it
        assert (await c.post("/api/apps/far/stop")).status_code == 200
        assert_error(await c.get("/apps/far/api/info"), 503, "APP_STOPPED")
        assert builds(storage, "far") == 3


async def test_restarted_worker_shows_lazy_apps_idle(one_worker: Cluster) -> None:
    sup = one_worker.supervisor
    assert sup is not None
    async with sup.admin() as c:
        await create(c, "lazy", environments=["env_a"])
        await create(c, "off", environments=["env_a"])
        assert (await c.post("/api/apps/off/stop")).status_code == 200
        one_worker.workers["env_a"].restart()  # a clean stop, then a new instance
        await one_worker.wait_environments(c, {"env_a": 1})
        await wait_status(c, "lazy", "env_a", "idle")
        assert await status_of(c, "off", "env_a") == "stopped"
        assert (await c.get("/apps/lazy/api/info")).status_code == 200
        assert await status_of(c, "lazy", "env_a") == "running"


# --- capacity -----------------------------------------------------------------------------


async def test_capacity_puts_the_least_recently_used_app_idle(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_MAX_RUNNING_APPS="2")
    release = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        yield b"x"
        await release.wait()
        yield b"y"

    async with running_host(settings) as server:
        c = server.api
        for name in ("one", "two", "three"):
            await create(c, name, options={"test": {"hold": True}})

        async def statuses() -> dict[str, str]:
            apps = (await c.get("/api/apps")).json()["apps"]
            return {a["name"]: a["statuses"]["local"] for a in apps}

        for name in ("one", "two"):
            assert (await c.get(f"/apps/{name}/api/info")).status_code == 200
        assert await statuses() == {"one": "running", "two": "running", "three": "idle"}
        # three needs a place: one is the least recently used
        assert (await c.get("/apps/three/api/info")).status_code == 200
        assert await statuses() == {"one": "idle", "two": "running", "three": "running"}
        # two is used again, so three is now the least recently used
        assert (await c.get("/apps/two/api/info")).status_code == 200
        assert (await c.get("/apps/one/api/info")).status_code == 200
        assert await statuses() == {"one": "running", "two": "running", "three": "idle"}

        # both running apps busy: no place for three
        runtime = runtime_of(server)
        held = [
            asyncio.create_task(c.post(f"/apps/{name}/test/hold", content=held_body()))
            for name in ("one", "two")
        ]

        async def both_in_flight() -> bool:
            return all(runtime.tenants[n].inflight == 1 for n in ("one", "two"))

        await wait_for(both_in_flight)
        r = await c.get("/apps/three/api/info")
        assert_error(r, 503, "APP_CAPACITY")
        assert r.headers["retry-after"] == "1"
        assert await statuses() == {"one": "running", "two": "running", "three": "idle"}
        release.set()
        for task in held:
            assert (await task).status_code == 200
        # the held requests are over: a place can be made again
        assert (await c.get("/apps/three/api/info")).status_code == 200
        assert sorted((await statuses()).values()) == ["idle", "running", "running"]


# --- boot admission -----------------------------------------------------------------------


def boot_spans(storage: Path, apps: list[str], pid: str) -> list[tuple[float, float]]:
    spans = []
    for app in apps:
        for line in (storage / "apps" / app / "boots.txt").read_text().splitlines():
            _env, boot_pid, began, ended = line.split()
            if boot_pid == pid:
                spans.append((float(began), float(ended)))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted(itertools.chain(((b, 1) for b, _ in spans), ((e, -1) for _, e in spans)))
    now = peak = 0
    for _at, step in edges:  # an end sorts before a begin at the same instant
        now += step
        peak = max(peak, now)
    return peak


async def test_host_start_boots_with_supervisor_apps_a_few_at_a_time(
    servers: ServerFactory,
) -> None:
    server = servers.start(NOCOSUP_BOOT_CONCURRENCY="3")
    apps = [f"eager{i}" for i in range(9)]
    options = {"startMode": "with_supervisor", "test": {"bootDelay": 0.3}}
    async with server.admin() as c:
        for name in apps:
            await create(c, name, options=options)
    server.restart()
    async with server.admin() as c:

        async def all_running() -> bool:
            listed = (await c.get("/api/apps")).json()["apps"]
            return all(a["statuses"]["local"] == "running" for a in listed)

        await wait_for(all_running)
        pid = str((await c.get("/apps/eager0/api/info")).json()["pid"])
    spans = boot_spans(server.storage, apps, pid)
    assert len(spans) == len(apps)  # each booted once by the new process
    assert most_at_once(spans) == 3


async def test_boot_queue_wait_counts_against_boot_wait(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_BOOT_CONCURRENCY="1", NOCOSUP_BOOT_WAIT="0.2")
    async with running_host(settings) as server:
        c = server.api
        await create(c, "slow", options={"test": {"bootDelay": 2}})
        await create(c, "quick")
        runtime = runtime_of(server)
        slow = asyncio.create_task(c.get("/apps/slow/api/info"))

        async def slow_boots() -> bool:
            return runtime.admission.active == 1

        await wait_for(slow_boots)
        # quick waits for the one boot slot: its wait runs out while queued
        assert_error(await c.get("/apps/quick/api/info"), 503, "APP_INITIALIZING")
        assert_error(await slow, 503, "APP_INITIALIZING")
        await wait_status(c, "quick", "local", "running")  # the queued boot went on


# --- fair share ---------------------------------------------------------------------------


async def test_overloaded_app_answers_503_and_its_neighbour_is_served(
    servers: ServerFactory,
) -> None:
    server = servers.start()
    release = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        yield b"x"
        await release.wait()
        yield b"y"

    async with server.admin() as c:
        await create(c, "busy", options={"maxConcurrency": 1, "test": {"hold": True}})
        await create(c, "calm")
        assert (await c.get("/apps/busy/api/info")).status_code == 200
        marker = server.storage / "apps" / "busy" / "held"
        held = asyncio.create_task(c.post("/apps/busy/test/hold", content=held_body()))

        async def in_flight() -> bool:
            return marker.exists()

        await wait_for(in_flight)
        r = await c.get("/apps/busy/api/info")
        assert_error(r, 503, "APP_OVERLOADED")
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["max_concurrency"] == 1
        # the neighbour is not affected
        for _ in range(5):
            assert (await c.get("/apps/calm/api/info")).status_code == 200
        release.set()
        assert (await held).status_code == 200
        assert (await c.get("/apps/busy/api/info")).status_code == 200


async def test_requests_over_the_cap_wait_in_line(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        yield b"x"
        await release.wait()
        yield b"y"

    async with running_host(inproc_settings(tmp_path)) as server:
        c = server.api
        options = {"maxConcurrency": 1, "maxQueue": 1, "test": {"hold": True}}
        await create(c, "line", options=options)
        assert (await c.get("/apps/line/api/info")).status_code == 200
        gate = runtime_of(server).tenants["line"].gate
        assert gate is not None
        held = asyncio.create_task(c.post("/apps/line/test/hold", content=held_body()))

        async def in_flight() -> bool:
            return gate.active == 1

        await wait_for(in_flight)
        queued = asyncio.create_task(c.get("/apps/line/api/sleep", params={"ms": 0}))

        async def waiting() -> bool:
            return gate.waiting == 1

        await wait_for(waiting)
        assert_error(await c.get("/apps/line/api/info"), 503, "APP_OVERLOADED")
        assert not queued.done()
        release.set()
        assert (await held).status_code == 200
        r = await queued
        assert r.status_code == 200 and r.json()["slept_ms"] == 0
        assert gate.active == 0 and gate.waiting == 0


async def test_starter_sleep_is_validated(inproc: InProc) -> None:
    c = inproc.api
    await create(c, "zz")
    r = await c.get("/apps/zz/api/sleep", params={"ms": 5})
    assert r.status_code == 200 and r.json()["slept_ms"] == 5
    for bad in ("10001", "-1", "abc", ""):
        r = await c.get("/apps/zz/api/sleep", params={"ms": bad})
        assert_error(r, 422, "VALIDATION_ERROR", "ms")


async def test_last_seen_at_in_shared_memory(inproc: InProc) -> None:
    c = inproc.api
    await create(c, "seen")
    assert (await c.get("/api/apps/seen")).json()["last_seen_at"] == {"local": None}
    assert (await c.get("/apps/seen/api/info")).status_code == 200
    first = (await c.get("/api/apps/seen")).json()["last_seen_at"]["local"]
    assert first is not None and first.endswith("Z")
    assert (await c.get("/apps/seen/api/info")).status_code == 200
    assert (await c.get("/api/apps/seen")).json()["last_seen_at"]["local"] >= first


# --- the pieces on their own --------------------------------------------------------------


async def test_request_gate_passes_slots_on_in_order_and_survives_cancelled_waiters() -> None:
    gate = RequestGate(1, 2)
    assert await gate.enter()
    order: list[str] = []

    async def wait(name: str) -> None:
        assert await gate.enter()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    gone = asyncio.create_task(wait("gone"))
    await wait_for(lambda: _true(gate.waiting == 2))
    assert not await gate.enter()  # the line is full: refused at once
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gate.waiting == 1
    last = asyncio.create_task(wait("last"))
    await wait_for(lambda: _true(gate.waiting == 2))
    gate.leave()  # the slot goes to the first in line, not to a newcomer
    await first
    assert gate.active == 1 and order == ["first"]
    gate.leave()
    await last
    assert order == ["first", "last"] and gate.active == 1 and gate.waiting == 0
    gate.leave()
    assert gate.active == 0


async def _true(value: bool) -> bool:
    return value


def test_last_seen_fields_from_redis_are_checked() -> None:
    now_ms = int(time.time() * 1000)
    fields = {
        "env_a/one": str(now_ms - 5000),
        "env_a/two": str(now_ms - 1000),  # the latest instance of env_a wins
        "env_b/one": "not a number",
        "env_c/x": str(now_ms + 3_600_000),  # an hour ahead: nonsense
        "no-slash": str(now_ms),
        "env_d/one": "-5",
    }
    seen = latest_by_environment(fields)
    assert seen == {"env_a": iso_time((now_ms - 1000) / 1000)}
    assert latest_by_environment(ResponseError("WRONGTYPE")) == {}


async def test_host_start_boots_no_more_eager_apps_than_the_cap(tmp_path: Path) -> None:
    """Four with_supervisor apps and NOCOSUP_MAX_RUNNING_APPS=2: the restarted host boots
    two and leaves two idle, rather than evicting what it just booted."""
    eager = {"startMode": "with_supervisor"}
    async with running_host(inproc_settings(tmp_path)) as first:
        for name in ("e1", "e2", "e3", "e4"):
            r = await first.api.post("/api/apps", json={"name": name, "options": eager})
            assert r.status_code == 201, r.text
    settings = inproc_settings(tmp_path, NOCOSUP_MAX_RUNNING_APPS="2")
    async with running_host(settings) as h:

        async def settled() -> dict[str, str] | None:
            apps = (await h.api.get("/api/apps")).json()["apps"]
            statuses = {a["name"]: a["statuses"]["local"] for a in apps}
            return statuses if "preparing" not in statuses.values() else None

        statuses = await wait_for(settled)
        await asyncio.sleep(0.3)  # an eviction would show by now
        statuses = await settled() or {}
        assert sorted(statuses.values()) == ["idle", "idle", "running", "running"], statuses
        # two boots only: none refused for capacity, none put to idle to make room
        assert sum(h.host.metrics.boots.values()) == 2, h.host.metrics.boots
        assert h.host.metrics.app_events == {}
        # an idle one still boots on its first request (evicting the least recent)
        idle = next(name for name, status in statuses.items() if status == "idle")
        async with h.client() as anon:
            assert (await anon.get(f"/apps/{idle}/api/info")).status_code == 200
