"""/readyz per role against real processes: a Redis blip leaves a worker that can still
serve its tenants ready ("degraded") for a heartbeat TTL, then not ready; it recovers
by itself. Redis is frozen through a relay (tests/relay.py), never the shared server."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.relay import relay
from tests.servers import ServerFactory
from tests.test_tenants import create


async def test_a_redis_blip_degrades_readiness_before_failing_it(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    target = urlsplit(REDIS_URL)
    with relay(target.hostname or "127.0.0.1", target.port or 6379) as frozen, servers:
        url = f"redis://127.0.0.1:{frozen.port}{target.path or '/0'}"
        # heartbeat TTL = 3 x 2 s: the grace during which a Redis blip is "degraded"
        cluster = Cluster(servers, pg_env, redis_prefix, url, interval=2)
        supervisor = cluster.start_supervisor()
        worker = cluster.start_worker("env_a")
        async with supervisor.admin() as c:
            await cluster.wait_environments(c, {"env_a": 1})
            await create(c, "blip1", environments=["env_a"])
            started = await c.post("/api/apps/blip1/start")
            assert started.status_code == 200, started.text
        async with worker.client() as w, supervisor.client() as s:
            assert (await w.get("/apps/blip1/api/info")).status_code == 200
            ready = await w.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"

            frozen.freeze()
            try:
                degraded = await w.get("/readyz")
                assert degraded.status_code == 200, degraded.text
                body = degraded.json()
                assert body["status"] == "degraded"
                assert "redis" in body["degraded"]
                assert "TimeoutError" in body["checks"]["redis"]
                # the worker still serves its tenants meanwhile
                served = await w.get("/apps/blip1/api/info")
                assert served.status_code == 200 and served.json()["app"] == "blip1"
                sup_ready = await s.get("/readyz")
                assert sup_ready.status_code == 200, sup_ready.text
                assert sup_ready.json()["checks"]["database"] is True

                # down for longer than the grace: not ready, naming the check
                async def unready() -> httpx.Response | None:
                    resp = await w.get("/readyz")
                    return resp if resp.status_code == 503 else None

                failed = await wait_for(unready, timeout=30)
                assert failed.json()["status"] == "unavailable"
                assert isinstance(failed.json()["checks"]["redis"], str)
            finally:
                frozen.thaw()

            async def ready_again() -> bool:
                resp = await w.get("/readyz")
                return resp.status_code == 200 and resp.json()["status"] == "ready"

            await wait_for(ready_again, timeout=30)
