"""Boots and stops, in process: single flight, failures kept to one app, start modes,
the boot wait and the draining stop (LocalRuntime behind the host's own dispatch)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from nocosup import hookimpl
from nocosup.appctx import AppContext
from tests.cluster import wait_for
from tests.inproc import InProc, inproc_settings, running_host
from tests.test_admin_api import assert_error
from tests.test_tenants import create


def builds(server: InProc, name: str) -> int:
    path = server.storage / "apps" / name / "builds.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_concurrent_first_requests_boot_once(inproc: InProc) -> None:
    async with inproc.admin() as c:
        await create(c, "slow", options={"test": {"bootDelay": 0.5}})
    limits = httpx.Limits(max_connections=20)
    async with inproc.client(limits=limits) as c:
        responses = await asyncio.gather(*(c.get("/apps/slow/api/info") for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    assert len({r.json()["pid"] for r in responses}) == 1
    assert builds(inproc, "slow") == 1


async def test_concurrent_admin_starts_boot_once(inproc: InProc) -> None:
    async with inproc.admin() as c:
        await create(c, "twice", options={"test": {"bootDelay": 0.3}})
        results = await asyncio.gather(
            *(c.post("/api/apps/twice/start") for _ in range(5)), c.get("/apps/twice/api/info")
        )
    assert [r.status_code for r in results] == [200] * 6
    assert builds(inproc, "twice") == 1


async def test_a_crashing_app_leaves_the_others_serving(inproc: InProc) -> None:
    async with inproc.admin() as c:
        await create(c, "good")
        await create(c, "badfactory", options={"test": {"crash": "factory"}})
        await create(c, "badlifespan", options={"test": {"crash": "lifespan"}})
        r = await c.get("/apps/badfactory/api/info")
        assert_error(r, 503, "APP_ERROR")
        assert "factory exploded on purpose" in r.json()["error"]["message"]
        r = await c.get("/apps/badlifespan/api/info")
        assert_error(r, 503, "APP_ERROR")
        assert "lifespan exploded on purpose" in r.json()["error"]["message"]
        assert "Traceback" not in r.json()["error"]["message"]
        assert (await c.get("/apps/good/api/info")).status_code == 200
        app = (await c.get("/api/apps/badfactory")).json()
        assert app["statuses"] == {"local": "error"}
        assert "factory exploded" in app["errors"]["local"]
        # an explicit start retries and reports the failure with the API's error shape
        r = await c.post("/api/apps/badlifespan/start")
        assert_error(r, 502, "COMMAND_FAILED")
        assert "lifespan exploded" in r.json()["error"]["message"]
        assert r.json()["error"]["results"]["local"]["ok"] is False
        # errors do not retry on every request: still one build per explicit attempt
        await c.get("/apps/badfactory/api/info")
        assert builds(inproc, "badfactory") == 1
        # fixing the options and starting again brings it up
        r = await c.patch("/api/apps/badfactory", json={"options": {"test": None}})
        assert r.status_code == 200
        r = await c.post("/api/apps/badfactory/start")
        assert r.status_code == 200, r.text
        assert (await c.get("/apps/badfactory/api/info")).status_code == 200
        assert (await c.get("/apps/good/api/info")).status_code == 200


async def test_boot_wait_answers_initializing(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path, NOCOSUP_BOOT_WAIT="0.2")) as server:
        c = server.api
        await create(c, "sleepy", options={"test": {"bootDelay": 2}})
        r = await c.get("/apps/sleepy/api/info")
        assert_error(r, 503, "APP_INITIALIZING")
        assert r.headers["retry-after"] == "2"
        status = (await c.get("/api/apps/sleepy")).json()["statuses"]["local"]
        assert status in ("initializing", "initialized")
        for _ in range(100):
            r = await c.get("/apps/sleepy/api/info")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200
        assert builds(server, "sleepy") == 1


async def test_with_supervisor_apps_start_on_create_and_stop_means_stopped(
    inproc: InProc,
) -> None:
    async with inproc.admin() as c:
        app = await create(c, "eager", options={"startMode": "with_supervisor"})
        assert app["statuses"] == {"local": "running"}
        r = await c.post("/api/apps/eager/stop")
        assert r.status_code == 200 and r.json()["statuses"] == {"local": "stopped"}
        assert_error(await c.get("/apps/eager/api/info"), 503, "APP_STOPPED")
        assert builds(inproc, "eager") == 1
        r = await c.post("/api/apps/eager/start", params={"wait": "false"})
        assert r.status_code == 202
        assert r.json()["statuses"]["local"] in ("preparing", "initializing", "running")
        for _ in range(100):
            if (await c.get("/apps/eager/api/info")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await c.get("/apps/eager/api/info")).status_code == 200


async def test_stop_lets_inflight_requests_finish(tmp_path: Path) -> None:
    """A request in flight when the stop comes gets its whole answer from a live app,
    and the stop answers only after it: the stop waited for it (the drain).

    The request is held in flight by the test itself: it sends half its body, and the
    rest only once the stop is under way.
    """
    # A grace far beyond the test: only the request's end may end the drain.
    settings = inproc_settings(tmp_path, NOCOSUP_STOP_GRACE="600")
    marker = settings.storage_dir / "apps" / "drain" / "held"
    first, rest = b"a" * 100_000, b"b" * 100_000
    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield first
        await release.wait()
        yield rest

    async with running_host(settings) as server:
        c = server.api
        await create(c, "drain", options={"test": {"hold": True}})
        assert (await c.post("/api/apps/drain/start")).status_code == 200
        request = asyncio.create_task(c.post("/apps/drain/test/hold", content=body()))

        async def in_flight() -> bool:
            return marker.exists()

        await wait_for(in_flight)
        stop = asyncio.create_task(c.post("/api/apps/drain/stop"))

        async def stop_begun() -> str | None:
            status = (await c.get("/api/apps/drain")).json()["statuses"]["local"]
            return status if status in ("stopping", "stopped") else None

        await wait_for(stop_begun)
        # and, one more round trip later, the stop still waits for the request
        assert await stop_begun() == "stopping"
        assert not stop.done() and not request.done()
        release.set()
        answer = await request
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "received": len(first + rest),
            "sha256": hashlib.sha256(first + rest).hexdigest(),
            "lifespan_up": True,  # the app was not shut down under the request
        }
        stopped = await stop
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["statuses"] == {"local": "stopped"}
        assert_error(await c.get("/apps/drain/api/info"), 503, "APP_STOPPED")


async def test_with_supervisor_create_that_fails_to_start_is_still_created(
    inproc: InProc,
) -> None:
    async with inproc.admin() as c:
        r = await c.post(
            "/api/apps",
            json={
                "name": "eagerbad",
                "options": {"startMode": "with_supervisor", "test": {"crash": "factory"}},
            },
        )
        assert r.status_code == 201, r.text
        app = r.json()
        assert app["statuses"] == {"local": "error"}
        assert app["results"]["local"]["ok"] is False
        assert "factory exploded" in app["results"]["local"]["error"]
        assert (await c.get("/api/apps/eagerbad")).status_code == 200


class HoldsTheStartUntilAStop:
    """Keeps a start from answering until a stop of the same app took over the app."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    @hookimpl
    async def after_app_start(self, app: AppContext) -> None:
        await self.stopping.wait()

    @hookimpl
    def before_app_stop(self, app: AppContext) -> None:
        self.stopping.set()


async def test_a_stop_during_a_start_is_a_conflict_not_a_failure(tmp_path: Path) -> None:
    """Found by schemathesis: the start answered 502 COMMAND_FAILED ('local: stopping')
    because a stop came in between its boot and its answer."""
    async with running_host(inproc_settings(tmp_path), [HoldsTheStartUntilAStop()]) as server:
        c = server.api
        await create(c, "raced")
        start = asyncio.create_task(c.post("/api/apps/raced/start"))

        async def booted() -> bool:
            return (await c.get("/api/apps/raced")).json()["statuses"]["local"] == "running"

        await wait_for(booted)
        stopped = await c.post("/api/apps/raced/stop")
        assert stopped.status_code == 200 and stopped.json()["statuses"] == {"local": "stopped"}
        r = await start
        assert_error(r, 409, "APP_STATE_CONFLICT")
        assert "a stop of it came in meanwhile" in r.json()["error"]["message"]
        assert r.json()["error"]["app"]["desired_state"] == "stopped"
