"""Forwarded headers are believed from trusted proxies only (NOCOSUP_TRUSTED_PROXIES):
a client cannot pass itself off as another address, scheme or host, and through the
supervisor's proxy a tenant sees the public client, scheme and Host (so its redirects and
absolute URLs point at the supervisor, not at the worker's internal address)."""

from __future__ import annotations

from typing import Any

import httpx

from nocosup.config import Settings
from nocosup.forwarded import FORWARDING, resolve
from tests.cluster import Cluster
from tests.conftest import REDIS_URL
from tests.servers import ServerFactory
from tests.test_tenants import create

SPOOF = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Prefix": "/evil",
    "Forwarded": "for=6.6.6.6;host=evil.example;proto=https",
    "X-Real-IP": "6.6.6.6",
}
#: A client on another loopback address than the servers talk to each other from.
ELSEWHERE = "127.0.0.2"


def scope(peer: str, headers: dict[str, str], kind: str = "http") -> dict[str, Any]:
    return {
        "type": kind,
        "scheme": "ws" if kind == "websocket" else "http",
        "client": (peer, 50000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


def test_an_untrusted_peer_loses_every_forwarding_header() -> None:
    settings = Settings.from_env({"NOCOSUP_TRUSTED_PROXIES": "10.0.0.1"})
    out = resolve(scope("192.0.2.7", {"Host": "n.test", **SPOOF}), settings)
    assert out["headers"] == [(b"host", b"n.test")]
    assert out["client"] == ("192.0.2.7", 50000) and out["scheme"] == "http"


def test_a_trusted_peer_vouches_for_client_scheme_and_host() -> None:
    settings = Settings.from_env({"NOCOSUP_TRUSTED_PROXIES": "10.0.0.0/8"})
    headers = {
        "Host": "worker:80",
        # a client's own claim, then the hops of two trusted proxies
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.0.0.5",
        "X-Forwarded-Proto": "http, https",
        "X-Forwarded-Host": "spoofed.example, crm.example.com",
    }
    out = resolve(scope("10.0.0.2", headers), settings)
    assert out["client"] == ("203.0.113.9", 0)
    assert out["scheme"] == "https"
    assert (b"host", b"crm.example.com") in out["headers"]
    assert (b"host", b"worker:80") not in out["headers"]
    ws = resolve(scope("10.0.0.2", headers, "websocket"), settings)
    assert ws["scheme"] == "wss"


def test_a_direct_client_costs_nothing() -> None:
    original = scope("192.0.2.7", {"Host": "n.test", "Accept": "*/*"})
    assert resolve(original, Settings()) is original
    assert b"x-forwarded-for" in FORWARDING


def _seen(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    body["names"] = {name for name, _ in body["headers"]}
    return body


def _from(address: str, base_url: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30)


async def test_a_client_cannot_spoof_its_address_to_a_tenant(servers: ServerFactory) -> None:
    """The repro: workers ran with --forwarded-allow-ips *, so X-Forwarded-For: 6.6.6.6
    reached the tenant as the client's address."""
    server = servers.start()
    async with server.admin() as c:
        await create(c, "echo", options={"test": {"echo": True}})
    async with _from(ELSEWHERE, server.url) as c:
        seen = _seen(await c.get("/apps/echo/x", headers=SPOOF))
    assert seen["client"] == ELSEWHERE and seen["scheme"] == "http"
    assert not seen["names"] & {n.lower() for n in SPOOF}
    assert ["host", f"127.0.0.1:{server.port}"] in seen["headers"]


async def test_a_trusted_proxy_is_believed(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_TRUSTED_PROXIES="127.0.0.1")
    async with server.admin() as c:
        await create(c, "echo", options={"test": {"echo": True}})
        await create(c, "site")
    front = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "crm.example.com",
    }
    async with server.client() as c:
        seen = _seen(await c.get("/apps/echo/x", headers=front))
        assert seen["client"] == "203.0.113.9" and seen["scheme"] == "https"
        assert ["host", "crm.example.com"] in seen["headers"]
        # the tenant's own redirects carry the public address
        r = await c.get("/apps/site/api/info/", headers=front)
        assert r.status_code == 307
        assert r.headers["location"] == "https://crm.example.com/apps/site/api/info"
    # the same headers from another peer count for nothing
    async with _from(ELSEWHERE, server.url) as c:
        seen = _seen(await c.get("/apps/echo/x", headers=front))
    assert seen["client"] == ELSEWHERE and not seen["names"] & {n.lower() for n in front}


async def test_through_the_proxy_tenants_see_the_public_client_and_host(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    """Issue: a FastAPI redirect through the proxy answered Location:
    http://127.0.0.1:<worker port>/...; the worker now believes its supervisor's
    X-Forwarded-* (and only the supervisor's)."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor()
    worker = cluster.start_worker("env_a")  # it trusts 127.0.0.1, the supervisor's address
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "echo", environments=["env_a"], options={"test": {"echo": True}})
        await create(c, "site", environments=["env_a"])
    async with _from(ELSEWHERE, supervisor.url) as c:
        seen = _seen(await c.get("/apps/echo/x", headers=SPOOF))
        assert seen["client"] == ELSEWHERE and seen["scheme"] == "http"
        assert ["host", f"127.0.0.1:{supervisor.port}"] in seen["headers"]
        assert "6.6.6.6" not in str(seen["headers"]) and "evil" not in str(seen["headers"])
        r = await c.get("/apps/site/api/info/")
        assert r.status_code == 307
        assert r.headers["location"] == f"http://127.0.0.1:{supervisor.port}/apps/site/api/info"
    # straight at the worker, from a peer it does not trust: nothing forwarded is believed
    async with _from(ELSEWHERE, worker.url) as c:
        seen = _seen(await c.get("/apps/echo/x", headers=SPOOF))
    assert seen["client"] == ELSEWHERE
    assert not seen["names"] & {n.lower() for n in SPOOF}


async def test_a_chain_of_trusted_proxies_reaches_the_tenant(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    """Load balancer (the test, from 127.0.0.1) -> supervisor -> worker: each hop appends
    its peer to X-Forwarded-For, and the tenant's client is the last untrusted hop."""
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor(NOCOSUP_TRUSTED_PROXIES="127.0.0.1")
    cluster.start_worker("env_a")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "echo", environments=["env_a"], options={"test": {"echo": True}})
        front = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        seen = _seen(await c.get("/apps/echo/x", headers=front))
    assert seen["client"] == "203.0.113.9" and seen["scheme"] == "https"
    assert ["x-forwarded-for", "203.0.113.9, 127.0.0.1"] in seen["headers"]
