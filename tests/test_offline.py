"""Requests the supervisor cannot deliver get 503 with Retry-After, never a 502 or a wait
for NOCOSUP_PROXY_TIMEOUT: a worker frozen (SIGSTOP) with requests in flight, a worker
shutting down gracefully (SIGTERM) while requests arrive. Real processes throughout."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.inproc import InProc, inproc_settings, running_host
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create


def held_file(servers: ServerFactory, env: str, app: str) -> Path:
    return servers.tmp_path / f"storage-{env}" / "apps" / app / "held"


async def held_body(release: asyncio.Event) -> AsyncIterator[bytes]:
    yield b"x" * 1024
    await release.wait()
    yield b"y" * 1024


async def deploy_held(cluster: Cluster, name: str) -> NocosupServer:
    supervisor = cluster.start_supervisor(NOCOSUP_PROXY_TIMEOUT="600")
    worker = cluster.start_worker("env_a")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, name, environments=["env_a"], options={"test": {"hold": True}})
        started = await c.post(f"/api/apps/{name}/start")
        assert started.status_code == 200, started.text
    return worker


async def test_requests_in_flight_to_a_frozen_worker_get_503_once_it_is_offline(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    worker = await deploy_held(cluster, "frozen2")
    supervisor = cluster.supervisor
    assert supervisor is not None
    release = asyncio.Event()
    # a generous client timeout: without the fix these would wait 600 s (proxy timeout)
    async with httpx.AsyncClient(base_url=supervisor.url, timeout=120) as c:
        held = asyncio.create_task(c.post("/apps/frozen2/test/hold", content=held_body(release)))
        await wait_for(lambda: _exists(held_file(servers, "env_a", "frozen2")))
        worker.signal(signal.SIGSTOP)
        try:
            release.set()  # the rest of the body goes to a worker that cannot read it
            waiting = asyncio.create_task(c.get("/apps/frozen2/api/info"))
            for resp in await asyncio.gather(held, waiting):
                assert_error(resp, 503, "APP_ENVIRONMENT_UNAVAILABLE")
                assert resp.headers["retry-after"]
                assert "went offline" in resp.json()["error"]["message"]
            # new requests are refused at once too, while it stays offline
            assert_error(await c.get("/apps/frozen2/api/info"), 503, "APP_ENVIRONMENT_UNAVAILABLE")
        finally:
            worker.signal(signal.SIGCONT)

        # thawed, it heartbeats again and serves
        async def served() -> bool:
            return (await c.get("/apps/frozen2/api/info")).status_code == 200

        await wait_for(served)


async def test_a_worker_shutting_down_gracefully_gives_503_never_502(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    worker = await deploy_held(cluster, "drain2")
    supervisor = cluster.supervisor
    assert supervisor is not None
    release = asyncio.Event()
    async with httpx.AsyncClient(base_url=supervisor.url, timeout=60) as c:
        assert (await c.get("/apps/drain2/api/info")).status_code == 200  # a kept-alive link
        held = asyncio.create_task(c.post("/apps/drain2/test/hold", content=held_body(release)))
        await wait_for(lambda: _exists(held_file(servers, "env_a", "drain2")))
        worker.signal(signal.SIGTERM)  # uvicorn stops accepting; the held request drains
        answers: list[httpx.Response] = []

        async def refused() -> bool:
            resp = await c.get("/apps/drain2/api/info")
            answers.append(resp)
            return resp.status_code == 503

        await wait_for(refused)
        # still online (its heartbeat runs while it drains): the refused connection says so
        assert "not accepting connections" in answers[-1].json()["error"]["message"]
        # while it drains, a WebSocket it refuses is denied with the same 503 (or closed 1013)
        ws_url = supervisor.url.replace("http://", "ws://") + "/apps/drain2/api/echo"
        with pytest.raises((InvalidStatus, ConnectionClosed)) as denied:
            async with websockets.connect(ws_url, proxy=None) as ws:
                await ws.recv()
        if isinstance(denied.value, InvalidStatus):
            assert denied.value.response.status_code == 503
            assert b"APP_ENVIRONMENT_UNAVAILABLE" in (denied.value.response.body or b"")
        else:
            assert denied.value.rcvd is not None and denied.value.rcvd.code == 1013
        release.set()
        drained = await held
        assert drained.status_code == 200, drained.text
        assert drained.json()["received"] == 2048 and drained.json()["lifespan_up"] is True
        for _ in range(5):  # and once it is gone
            answers.append(await c.get("/apps/drain2/api/info"))
    # it shut down cleanly (uvicorn re-raises the SIGTERM it handled on its way out)
    assert worker.proc is not None and worker.proc.wait(30) in (0, -signal.SIGTERM)
    statuses = {resp.status_code for resp in answers}
    assert statuses <= {200, 503}, statuses
    for resp in answers:
        if resp.status_code == 503:
            assert_error(resp, 503, "APP_ENVIRONMENT_UNAVAILABLE")
            assert resp.headers["retry-after"]


async def test_a_draining_host_answers_new_tenant_requests_503(inproc: InProc) -> None:
    await create(inproc.api, "drain3")
    assert (await inproc.api.get("/apps/drain3/api/info")).status_code == 200
    inproc.host.begin_draining()
    resp = await inproc.api.get("/apps/drain3/api/info")
    assert_error(resp, 503, "SHUTTING_DOWN")
    assert resp.headers["retry-after"]
    ready = await inproc.api.get("/readyz")  # a load balancer should send nothing new
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    # the host's own routes still answer (probes, the admin API) until it stops
    assert (await inproc.api.get("/healthz")).status_code == 200


async def test_a_draining_supervisor_still_proxies_and_is_not_ready(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    """A multi-environment supervisor only proxies: while it drains after SIGTERM, a
    request that still reaches it is served (its worker is fine), not failed with 503
    that no load balancer retries; its readiness fails so that nothing new is sent."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor()
    cluster.start_worker("env_a")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "sdrain", environments=["env_a"])
        assert (await c.post("/api/apps/sdrain/start")).status_code == 200
    # a second supervisor replica, in process, on the same registry and Redis
    settings = inproc_settings(
        tmp_path, **cluster.common(), APP_MODE="supervisor", APP_PROCESS_ADAPTER="remote"
    )
    async with running_host(settings) as replica:

        async def served() -> bool:
            return (await replica.api.get("/apps/sdrain/api/info")).status_code == 200

        await wait_for(served)
        assert (await replica.api.get("/readyz")).status_code == 200
        replica.host.begin_draining()
        resp = await replica.api.get("/apps/sdrain/api/info")
        assert resp.status_code == 200, resp.text
        ready = await replica.api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)
