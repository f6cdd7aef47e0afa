"""A rolling restart of every worker under load, with real processes: an app on two
environments loses no request (the supervisor sends a request the restarting one did not
take to the other); an app on one environment gets only 503 with Retry-After while its
environment restarts, and serves again after. The 503 window is measured and printed."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field

import httpx
import redis.asyncio as aioredis

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.servers import ServerFactory
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
