"""``GET /metrics``: Prometheus text that prometheus_client's own parser reads, counting
exactly what the test sent, in shared memory and on a supervisor and its worker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from nocosup.metrics import LATENCY_BUCKETS, Metrics, _Snapshot
from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.inproc import inproc_settings, running_host
from tests.servers import ADMIN_TOKEN, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create

METRICS_TOKEN = "metrics-token-abcdefghijklmnopqrstuvwxyz012345"


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as {(name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient, token: str = ADMIN_TOKEN) -> dict[Any, float]:
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text)


async def test_shared_memory_counts_what_was_sent(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_METRICS_TOKEN=METRICS_TOKEN)
    async with running_host(settings) as h, h.client() as anon:
        await create(h.api, "crm")
        await create(h.api, "shop")
        for _ in range(3):
            assert (await anon.get("/apps/crm/api/info")).status_code == 200
        assert (await anon.get("/apps/crm/no-such-page")).status_code == 404
        assert (await anon.get("/apps/shop/api/info")).status_code == 200
        assert (await h.api.post("/api/apps/shop/stop")).status_code == 200
        assert_error(await anon.get("/apps/shop/api/info"), 503, "APP_STOPPED")

        got = await scrape(anon, METRICS_TOKEN)  # the read-only token
        crm = {"app": "crm", "environment": "local"}
        assert value(got, "nocosup_requests_total", code="2xx", **crm) == 3
        assert value(got, "nocosup_requests_total", code="4xx", **crm) == 1
        assert value(got, "nocosup_request_duration_seconds_count", **crm) == 4
        assert value(got, "nocosup_request_duration_seconds_bucket", le="+Inf", **crm) == 4
        assert value(got, "nocosup_requests_in_flight", **crm) == 0
        shop = {"app": "shop", "environment": "local"}
        assert value(got, "nocosup_requests_total", code="2xx", **shop) == 1
        assert value(got, "nocosup_requests_total", code="5xx", **shop) == 1
        assert value(got, "nocosup_apps", status="running") == 1
        assert value(got, "nocosup_apps", status="stopped") == 1
        # the admin token reads it too; the metrics token opens nothing else
        assert (await scrape(h.api))[("nocosup_apps", frozenset({("status", "running")}))] == 1
        r = await anon.get("/api/apps", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert_error(r, 401, "UNAUTHORIZED")


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}"])
async def test_metrics_need_a_token(tmp_path: Path, header: str | None) -> None:
    async with running_host(inproc_settings(tmp_path)) as h, h.client() as anon:
        headers = {"Authorization": header} if header else {}
        assert_error(await anon.get("/metrics", headers=headers), 401, "UNAUTHORIZED")


def test_a_short_metrics_token_is_a_config_error(servers: ServerFactory) -> None:
    with pytest.raises(RuntimeError, match="NOCOSUP_METRICS_TOKEN must be at least 32"):
        servers.start(NOCOSUP_METRICS_TOKEN="short")


async def test_supervisor_and_worker_count_proxied_traffic(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    sup = cluster.start_supervisor(NOCOSUP_METRICS_TOKEN=METRICS_TOKEN)
    worker = cluster.start_worker("env_a", NOCOSUP_METRICS_TOKEN=METRICS_TOKEN)
    async with sup.admin() as c, sup.client() as anon, worker.client() as direct:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "prox")
        for _ in range(5):
            assert (await anon.get("/apps/prox/api/info")).status_code == 200
        # not for the fast path: the slash redirect and a host route go through ASGI
        assert (await anon.get("/apps/prox")).status_code == 307
        assert (await anon.get("/healthz")).status_code == 200
        ws_url = sup.url.replace("http", "ws") + "/apps/prox/api/echo"
        async with websockets.connect(ws_url) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"

        on_env = {"app": "prox", "environment": "env_a"}
        got = await scrape(anon, METRICS_TOKEN)
        assert value(got, "nocosup_requests_total", code="2xx", **on_env) == 5

        # the session is counted when the proxy has closed both sides: soon after
        async def session_counted() -> bool:
            seen = await scrape(anon, METRICS_TOKEN)
            return value(seen, "nocosup_websocket_sessions_total", **on_env) == 1

        await wait_for(session_counted, timeout=10)
        assert value(got, "nocosup_environment_instances", environment="env_a") == 1
        # the five GETs took the supervisor's fast path; the WebSocket and /api did not
        assert value(got, "nocosup_proxy_fast_path_requests_total") == 5
        # all but the first (which opened the connection the others reused) without a
        # task: on the lean lane, or the express lane when the lean one handed them over
        express = value(got, "nocosup_proxy_express_requests_total")
        lean = value(got, "nocosup_proxy_lean_requests_total")
        assert express is not None and lean is not None
        assert express + lean == 4
        assert lean >= 1
        age = value(got, "nocosup_environment_heartbeat_age_seconds", environment="env_a")
        assert age is not None and age >= 0
        assert value(got, "nocosup_apps", status="running") == 1
        # the create's command round trip to env_a was timed
        trips = value(
            got, "nocosup_command_round_trip_seconds_count", environment="env_a", action="create"
        )
        assert trips == 1

        # the worker counted the same requests, served in its own environment
        async def counted_on_worker() -> bool:
            seen = await scrape(direct, METRICS_TOKEN)
            return value(seen, "nocosup_requests_total", code="2xx", **on_env) == 5

        await wait_for(counted_on_worker, timeout=10)
        seen = await scrape(direct, METRICS_TOKEN)
        assert value(seen, "nocosup_apps", status="running") == 1
        # a worker has no admin token of its own: only the metrics token reads it
        r = await direct.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert_error(r, 401, "UNAUTHORIZED")


async def test_boots_idle_stops_evictions_and_overloads_are_counted(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_MAX_RUNNING_APPS="2")
    async with running_host(settings) as h, h.client() as anon:
        await create(h.api, "lazy", options={"idleTimeout": 1})
        await create(h.api, "eager")
        await create(h.api, "third")
        await create(h.api, "tight", options={"maxConcurrency": 1})
        assert (await anon.get("/apps/lazy/api/info")).status_code == 200  # first request
        assert (await h.api.post("/api/apps/eager/start")).status_code == 200  # admin

        async def lazy_idle() -> bool:
            r = await h.api.get("/api/apps/lazy")
            return bool(r.json()["statuses"] == {"local": "idle"})

        await wait_for(lazy_idle, timeout=15)
        assert (await anon.get("/apps/lazy/api/info")).status_code == 200  # wake
        # two apps run (the cap): a third evicts the least recently used, eager
        assert (await anon.get("/apps/third/api/info")).status_code == 200
        # one request in flight at a time for tight, none queued: the second is refused
        slow = asyncio.create_task(anon.get("/apps/tight/api/sleep", params={"ms": 1500}))
        await asyncio.sleep(0.5)
        assert_error(await anon.get("/apps/tight/api/info"), 503, "APP_OVERLOADED")
        assert (await slow).status_code == 200

        got = await scrape(anon)
        boots = {
            (app, reason): value(
                got, "nocosup_boots_total", app=app, environment="local", reason=reason
            )
            for app, reason in [
                ("lazy", "first_request"),
                ("lazy", "wake"),
                ("eager", "admin"),
                ("third", "first_request"),
            ]
        }
        assert boots == {k: 1 for k in boots}, boots
        lazy = {"app": "lazy", "environment": "local"}
        assert value(got, "nocosup_cold_start_seconds_count", **lazy) == 2
        assert value(got, "nocosup_idle_stops_total", **lazy) == 1
        evicted = value(got, "nocosup_evictions_total", app="eager", environment="local")
        assert evicted == 1
        tight = {"app": "tight", "environment": "local"}
        assert value(got, "nocosup_overload_rejections_total", **tight) == 1
        assert value(got, "nocosup_requests_total", code="5xx", **tight) == 1

        # a removed app's series go with it
        assert (await h.api.delete("/api/apps/tight")).status_code == 200
        after = await scrape(anon)
        assert value(after, "nocosup_requests_total", code="2xx", **tight) is None


def test_observe_counts_what_serve_counts() -> None:
    """Metrics.observe, for a caller that times a request itself (a proxy, say): the same
    series and buckets as a request through Metrics.serve, forgotten with the app."""
    metrics = Metrics("local")
    metrics.observe("shop", "env_a", 200, 0.0002)  # the first bucket
    metrics.observe("shop", "env_a", 404, 0.3)
    metrics.observe("shop", "env_a", 0, 0.001)  # nothing answered: a 5xx
    metrics.observe("shop", "env_a", 101, 9.0)  # a WebSocket session, not timed
    metrics.observe("shop", "local", 200, 0.002)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics.families()))
    got = parse(generate_latest(registry).decode())
    shop = {"app": "shop", "environment": "env_a"}
    assert value(got, "nocosup_requests_total", code="2xx", **shop) == 1
    assert value(got, "nocosup_requests_total", code="4xx", **shop) == 1
    assert value(got, "nocosup_requests_total", code="5xx", **shop) == 1
    assert value(got, "nocosup_websocket_sessions_total", **shop) == 1
    assert value(got, "nocosup_request_duration_seconds_bucket", le="0.0005", **shop) == 1
    assert value(got, "nocosup_request_duration_seconds_bucket", le="0.001", **shop) == 2
    assert value(got, "nocosup_request_duration_seconds_bucket", le="0.25", **shop) == 2
    assert value(got, "nocosup_request_duration_seconds_bucket", le="0.5", **shop) == 3
    assert value(got, "nocosup_request_duration_seconds_count", **shop) == 3
    local = {"app": "shop", "environment": "local"}
    assert value(got, "nocosup_request_duration_seconds_count", **local) == 1
    assert metrics.stats("shop") is metrics.stats("shop", "local")
    metrics.forget("shop")
    assert metrics.requests == {}
    assert metrics.stats("shop").latency.counts == [0] * (len(LATENCY_BUCKETS) + 1)


async def _answers(port: int, heads: list[bytes]) -> list[dict[str, Any]]:
    """The echo app's JSON for each head, sent one after the other on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[dict[str, Any]] = []
    try:
        for head in heads:
            writer.write(head)
            got = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            assert got.startswith(b"HTTP/1.1 200 "), got
            length = int(got.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            out.append(json.loads(await reader.readexactly(length)))
    finally:
        writer.close()
    return out


async def test_heads_with_credentials_are_replayed_without_them(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    """A browser's repeated head carries its cookies (and maybe the admin token by
    mistake): the supervisor sends it again without parsing it, and the app still never
    sees the page's session cookie or the admin token, on a replay or a retarget."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    sup = cluster.start_supervisor(NOCOSUP_METRICS_TOKEN=METRICS_TOKEN)
    cluster.start_worker("env_a")
    async with sup.admin() as c, sup.client() as anon:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "echo", options={"test": {"echo": True}})
        assert (await anon.get("/apps/echo/warm")).status_code == 200  # a pooled connection
        fields = (
            b" HTTP/1.1\r\nHost: shop.test\r\n"
            b"Cookie: theme=dark; nocosup_admin=session-value; cart=3\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n\r\n"
        )
        before = value(await scrape(anon, METRICS_TOKEN), "nocosup_proxy_replayed_requests_total")
        answers = await _answers(
            sup.port,
            [b"GET /apps/echo/a" + fields] * 3 + [b"GET /apps/echo/b?x=1" + fields],
        )
        after = value(await scrape(anon, METRICS_TOKEN), "nocosup_proxy_replayed_requests_total")
    assert before is not None and after is not None
    assert after - before >= 2  # the second and third /a, /b too unless one missed
    for got in answers:
        headers = dict(got["headers"])
        assert headers["cookie"] == "theme=dark; cart=3"
        assert "authorization" not in headers
        assert headers["x-forwarded-host"] == "shop.test"
    assert [a["path"] for a in answers] == ["/apps/echo/a"] * 3 + ["/apps/echo/b"]
    assert answers[0] == answers[1] == answers[2]


async def test_what_a_replay_may_carry(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        base = [(b"host", b"x"), (b"accept", b"*/*")]
        assert h.host.replayable(base)
        assert h.host.replayable([*base, (b"cookie", b"a=1"), (b"authorization", b"Basic x")])
        # resolved against the peer, or the proxy's app choice: never replayed
        for name in (b"x-forwarded-for", b"forwarded", b"x-forwarded-host", b"x-nocosup-app"):
            assert not h.host.replayable([*base, (name, b"1")]), name
