"""Custom domains: validated, owned by one app, routed by Host to the app at its root in
shared-memory mode (in process) and through the proxy to a worker (real processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from nocosup import validation as v
from nocosup.domains import DomainRoutes
from nocosup.errors import InvalidInput
from nocosup.registry import AppRecord
from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.inproc import InProc, inproc_settings, running_host
from tests.servers import AUTH, ServerFactory
from tests.test_admin_api import assert_error

ECHO = {"test": {"echo": True}}
ADMIN = {**AUTH, "Host": "admin.test:8443"}


def test_domains_are_checked_and_lowercased() -> None:
    assert v.domains(None) == []
    assert v.domains(["CRM.Example.com", "localhost", "a-b.c9.io"]) == [
        "crm.example.com",
        "localhost",
        "a-b.c9.io",
    ]
    bad: list[Any] = [
        "crm.example.com",
        [5],
        ["crm.example.com:8080"],
        ["http://crm.example.com"],
        ["10.0.0.1"],
        ["crm.example.com."],
        ["-crm.example.com"],
        ["crm..example.com"],
        ["crm_x.example.com"],
        ["crm.example.com\n"],
        ["x" * 64 + ".com"],
        [("a" * 60 + ".") * 5 + "com"],
        ["a.com", "A.com"],
        [f"d{i}.example.com" for i in range(v.MAX_DOMAINS + 1)],
    ]
    for value in bad:
        with pytest.raises(InvalidInput) as exc:
            v.domains(value)
        assert exc.value.details == {"field": "domains"}, value


async def echo(client: httpx.AsyncClient, host: str, path: str) -> dict[str, Any]:
    r = await client.get(path, headers={"Host": host})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def test_domains_in_shared_memory_mode(inproc: InProc) -> None:
    c = inproc.api
    r = await c.post("/api/apps", json={"name": "crm", "options": ECHO, "domains": ["CRM.test"]})
    assert r.status_code == 201, r.text
    assert r.json()["domains"] == ["crm.test"]
    assert (await c.get("/api/apps/crm")).json()["domains"] == ["crm.test"]
    await c.post("/api/apps", json={"name": "shop", "options": ECHO})

    async with inproc.client() as anyone:
        # the app at its root, path as sent, with or without a port, any case
        seen = await echo(anyone, "crm.test", "/orders/7?x=1")
        assert (seen["path"], seen["root_path"]) == ("/orders/7", "")
        assert dict(seen["headers"])["host"] == "crm.test"
        assert (await echo(anyone, "Crm.Test:8443", "/"))["path"] == "/"
        # nocosup's own routes are the tenant's on its domain: no admin API, no page
        for path in ("/api/apps", "/healthz", "/", "/ui/app.js", "/apps/shop/"):
            assert (await echo(anyone, "crm.test", path))["path"] == path
        # the admin token never reaches the tenant, not on its domain either
        r = await anyone.get(
            "/api/apps", headers={"Host": "crm.test", "Authorization": "Bearer " + "t" * 40}
        )
        assert r.json()["path"] == "/api/apps"
        # other hosts are untouched
        assert (await anyone.get("/healthz")).json()["status"] == "ok"
        assert (await echo(anyone, "other.test", "/apps/crm/x"))["root_path"] == "/apps/crm"

    # one owner per domain: 409 naming the owner, nothing created or changed
    r = await c.post("/api/apps", json={"name": "crm2", "domains": ["crm.test"]})
    assert_error(r, 409, "DOMAIN_TAKEN")
    assert "'crm'" in r.json()["error"]["message"] and r.json()["error"]["domain"] == "crm.test"
    assert_error(await c.get("/api/apps/crm2"), 404, "APP_NOT_FOUND")
    assert_error(
        await c.patch("/api/apps/shop", json={"domains": ["crm.test"]}), 409, "DOMAIN_TAKEN"
    )
    r = await c.patch("/api/apps/shop", json={"domains": ["nope:80"]})
    assert_error(r, 422, "VALIDATION_ERROR", "domains")

    # moving a domain: the table follows the registry at once
    r = await c.patch("/api/apps/crm", json={"domains": ["sales.test"]})
    assert r.status_code == 200 and r.json()["domains"] == ["sales.test"]
    r = await c.patch("/api/apps/shop", json={"domains": ["crm.test"]})
    assert r.status_code == 200, r.text
    async with inproc.client() as anyone:
        assert (await echo(anyone, "sales.test", "/a"))["path"] == "/a"
        r = await anyone.get("/x", headers={"Host": "crm.test"})
        assert r.json()["path"] == "/x"  # shop's now
        assert dict(r.json()["headers"])["host"] == "crm.test"
    # null clears, and a removed app frees its domains
    r = await c.patch("/api/apps/crm", json={"domains": None})
    assert r.json()["domains"] == []
    assert (await c.delete("/api/apps/shop")).status_code == 200
    async with inproc.client() as anyone:
        r = await anyone.get("/healthz", headers={"Host": "crm.test"})
        assert r.json()["status"] == "ok"  # nocosup's own again
    r = await c.post("/api/apps", json={"name": "again", "domains": ["crm.test"]})
    assert r.status_code == 201, r.text


async def test_domains_survive_a_restart(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path)
    async with running_host(settings) as h:
        r = await h.api.post(
            "/api/apps", json={"name": "crm", "options": ECHO, "domains": ["c.test"]}
        )
        assert r.status_code == 201
    async with running_host(settings) as h, h.client() as anyone:
        assert (await echo(anyone, "c.test", "/z"))["path"] == "/z"


async def test_the_admin_host_is_never_a_domain(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_ADMIN_HOST="admin.test:8443")
    async with running_host(settings) as h, h.client(headers=ADMIN) as c:
        r = await c.post("/api/apps", json={"name": "crm", "domains": ["ADMIN.test"]})
        assert_error(r, 409, "DOMAIN_TAKEN")
        assert "NOCOSUP_ADMIN_HOST" in r.json()["error"]["message"]
        r = await c.post("/api/apps", json={"name": "crm", "domains": ["crm.test"]})
        assert r.status_code == 201
        r = await c.patch("/api/apps/crm", json={"domains": ["admin.test"]})
        assert_error(r, 409, "DOMAIN_TAKEN")


async def test_x_nocosup_app_is_not_believed_by_a_supervisor(inproc: InProc) -> None:
    """Only a worker takes the proxy's app choice, and only from a trusted proxy."""
    await inproc.api.post("/api/apps", json={"name": "crm", "options": ECHO})
    async with inproc.client() as anyone:
        r = await anyone.get("/healthz", headers={"X-Nocosup-App": "crm"})
        assert r.json()["status"] == "ok"
        seen = await echo(anyone, "x.test", "/apps/crm/")
        assert "x-nocosup-app" not in dict(seen["headers"])


# --- through the proxy ---------------------------------------------------------------------


@pytest.fixture
def cluster(servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str) -> Cluster:
    return Cluster(servers, pg_env, redis_prefix, REDIS_URL)


async def test_domains_through_the_proxy(cluster: Cluster) -> None:
    supervisor = cluster.start_supervisor()
    worker = cluster.start_worker("env_a")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        body = {"name": "crm", "options": ECHO, "domains": ["crm.test"], "environments": ["env_a"]}
        r = await c.post("/api/apps", json=body)
        assert r.status_code == 201, r.text
        await c.post("/api/apps", json={"name": "shop", "options": ECHO})

    async with supervisor.client() as anyone:
        for path in ("/", "/orders/7", "/api/apps", "/healthz", "/apps/shop/x"):
            r = await anyone.get(path, headers={"Host": "crm.test:8000"}, params={"q": "1"})
            assert r.status_code == 200, r.text
            seen = r.json()
            assert (seen["path"], seen["root_path"]) == (path, "")
            headers = dict(seen["headers"])
            assert headers["host"] == "crm.test:8000"  # the client's (worker trusts us)
            assert "x-nocosup-app" not in headers  # taken out before the tenant
        # other hosts: nocosup's routes and /apps/ as before
        assert (await anyone.get("/healthz")).json()["mode"] == "supervisor"
        seen = (await anyone.get("/apps/shop/x")).json()
        assert seen["root_path"] == "/apps/shop"

    # the header chooses the app on a worker only from a proxy it trusts (here the test
    # client is on 127.0.0.1, as the supervisor is); a worker that trusts someone else
    # serves its own route
    async with httpx.AsyncClient(base_url=worker.url) as direct:
        r = await direct.get("/healthz", headers={"X-Nocosup-App": "crm"})
        assert r.json()["path"] == "/healthz"
    other = cluster.start_worker("env_b", NOCOSUP_TRUSTED_PROXIES="10.9.9.9")
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_b": 1})
        body = {"name": "crm_b", "options": ECHO, "environments": ["env_b"]}
        assert (await c.post("/api/apps", json=body)).status_code == 201
    async with httpx.AsyncClient(base_url=other.url) as direct:
        r = await direct.get("/healthz", headers={"X-Nocosup-App": "crm_b"})
        assert r.json()["mode"] == "worker"

    # a moved domain is routed anew at once
    async with supervisor.admin() as c:
        r = await c.patch("/api/apps/shop", json={"domains": ["crm.test"]})
        assert_error(r, 409, "DOMAIN_TAKEN")
        await c.patch("/api/apps/crm", json={"domains": []})
        r = await c.patch("/api/apps/shop", json={"domains": ["crm.test"]})
        assert r.status_code == 200, r.text

    async def shop_answers() -> bool:
        async with supervisor.client() as anyone:
            r = await anyone.get("/who", headers={"Host": "crm.test"})
            return r.status_code == 200 and r.json()["path"] == "/who"

    await wait_for(shop_answers)


async def test_an_admin_host_set_later_wins_over_an_apps_domain(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        body = {"name": "crm", "options": ECHO, "domains": ["admin.test", "crm.test"]}
        assert (await h.api.post("/api/apps", json=body)).status_code == 201
    settings = inproc_settings(tmp_path, NOCOSUP_ADMIN_HOST="admin.test:8443")
    async with running_host(settings) as h, h.client(headers=ADMIN) as c:
        assert (await c.get("/api/apps")).json()["apps"][0]["domains"] == [
            "admin.test",
            "crm.test",
        ]
        assert (await echo(c, "crm.test", "/api/apps"))["path"] == "/api/apps"


def test_the_routing_table_follows_records() -> None:
    routes = DomainRoutes("Admin.test:8443")
    assert not routes
    routes.replace(
        [
            AppRecord("a", "A", ["e"], {}, {}, domains=["a.test", "admin.test"]),
            AppRecord("b", "B", ["e"], {}, {}, domains=["b.test"]),
        ]
    )
    assert routes.apps == {"a.test": "a", "b.test": "b"}  # never the admin host

    def match(host: bytes) -> str | None:
        return routes.match({"headers": [(b"accept", b"*/*"), (b"host", host)]})

    assert [match(h) for h in (b"a.test", b"A.Test:80", b"b.test:8443", b"admin.test")] == [
        "a",
        "a",
        "b",
        None,
    ]
    assert match(b"[::1]:80") is None and match(b"c.test") is None
    assert routes.match({"headers": []}) is None
    # b takes a.test from a (after a let it go), then b is removed
    routes.learn(AppRecord("a", "A", ["e"], {}, {}, domains=["a2.test"]))
    routes.learn(AppRecord("b", "B", ["e"], {}, {}, domains=["a.test"]))
    assert routes.apps == {"a2.test": "a", "a.test": "b"}
    routes.forget("b")
    assert routes.apps == {"a2.test": "a"} and match(b"a.test") is None
    routes.forget("a")
    assert not routes and match(b"a2.test") is None
