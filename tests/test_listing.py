"""Paging and filtering of ``GET /api/apps``: the registry's range scans on SQLite and
PostgreSQL, the API's query validation and status filter, and the CLI paging through."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import Database

from nocosup.config import Settings
from nocosup.db import connect_registry
from nocosup.listing import AppQuery, encode_cursor
from nocosup.registry import AppRecord, Registry
from tests.inproc import InProc
from tests.servers import ServerFactory
from tests.test_cli import ok, run


@pytest.fixture(params=["sqlite", "postgres"])
async def registry(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: str
) -> AsyncIterator[Registry]:
    if request.param == "sqlite":
        settings = Settings(storage_dir=tmp_path)
    else:
        settings = Settings(
            storage_dir=tmp_path, db_dialect="postgres", db_database=f"{pg_database}_listing"
        )
    db: Database = await connect_registry(settings)
    reg = Registry(db)
    await reg.migrate()
    try:
        yield reg
    finally:
        if request.param == "postgres":
            await db.execute("DROP TABLE IF EXISTS nocosup_apps")
        await db.disconnect()


def _record(name: str, envs: list[str]) -> AppRecord:
    return AppRecord(name, name.upper(), envs, {"startMode": "on_first_request"}, {})


async def _fill(registry: Registry) -> list[str]:
    names = ["a_b1", "axb2", "a-c", "b", "ab", "abc", "z9", "m_1", "m-2", "m"]
    for i, name in enumerate(names):
        await registry.insert(_record(name, ["env_a"] if i % 2 else ["env_a", "env.b"]))
    return sorted(names)


async def _all_pages(registry: Registry, query: AppQuery) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        page = await registry.page(query, query.limit)
        if not page:
            return pages
        pages.append([r.name for r in page])
        query = AppQuery(
            limit=query.limit,
            after=page[-1].name,
            environment=query.environment,
            prefix=query.prefix,
        )


async def test_pages_are_range_scans_in_name_order(registry: Registry) -> None:
    names = await _fill(registry)
    pages = await _all_pages(registry, AppQuery(limit=3))
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [n for p in pages for n in p] == names
    assert await registry.count(AppQuery()) == 10


async def test_prefix_wildcards_are_literal(registry: Registry) -> None:
    await _fill(registry)
    assert [r.name for r in await registry.page(AppQuery(prefix="a_"), 100)] == ["a_b1"]
    assert await registry.count(AppQuery(prefix="a_")) == 1
    assert [r.name for r in await registry.page(AppQuery(prefix="m"), 100)] == [
        "m",
        "m-2",
        "m_1",
    ]
    assert await registry.count(AppQuery(prefix="q")) == 0


async def test_environment_filter_matches_whole_names(registry: Registry) -> None:
    await _fill(registry)
    on_b = [r.name for r in await registry.page(AppQuery(environment="env.b"), 100)]
    assert on_b == sorted(["a_b1", "a-c", "ab", "z9", "m-2"])
    assert await registry.count(AppQuery(environment="env.b")) == 5
    assert await registry.count(AppQuery(environment="env_a")) == 10
    # "env" is a prefix of both names but the name of neither; "_" is not a wildcard
    assert await registry.count(AppQuery(environment="env")) == 0
    assert await registry.count(AppQuery(environment="envxa")) == 0
    assert await registry.count(AppQuery(environment="env.b", prefix="a")) == 3


# --- the API ---------------------------------------------------------------------------


async def _create(api: httpx.AsyncClient, names: list[str]) -> None:
    for name in names:
        r = await api.post("/api/apps", json={"name": name})
        assert r.status_code == 201, r.text


async def _walk(api: httpx.AsyncClient, **params: Any) -> tuple[list[str], list[int]]:
    """Every name the API pages through, and the total it gave with each page."""
    names: list[str] = []
    totals: list[int] = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await api.get("/api/apps", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        names += [a["name"] for a in body["apps"]]
        totals.append(body["total"])
        cursor = body["next_cursor"]
        if cursor is None:
            return names, totals
        assert len(body["apps"]) == int(params.get("limit", 100))


async def test_api_pages_with_total_and_cursor(inproc: InProc) -> None:
    names = [f"app{i:02d}" for i in range(23)] + ["crm", "crm_eu", "crm-us"]
    await _create(inproc.api, names)
    listed, totals = await _walk(inproc.api, limit=10)
    assert listed == sorted(names) and set(totals) == {26}
    everything = (await inproc.api.get("/api/apps")).json()
    assert len(everything["apps"]) == 26 and everything["next_cursor"] is None
    crm, totals = await _walk(inproc.api, prefix="crm", limit=2)
    assert crm == ["crm", "crm-us", "crm_eu"] and set(totals) == {3}
    first = (await inproc.api.get("/api/apps", params={"limit": 1})).json()
    assert first["apps"][0]["statuses"] == {"local": "idle"}  # statuses come with a page
    assert first["next_cursor"] == encode_cursor("app00")


async def test_status_filter_pages_over_matches(inproc: InProc) -> None:
    await _create(inproc.api, [f"s{i}" for i in range(7)])
    for name in ("s1", "s3", "s4", "s6"):
        r = await inproc.api.post(f"/api/apps/{name}/start")
        assert r.status_code == 200, r.text
    running, totals = await _walk(inproc.api, status="running", limit=3)
    assert running == ["s1", "s3", "s4", "s6"] and set(totals) == {4}
    lazy, totals = await _walk(inproc.api, status="idle", limit=2)  # not booted yet
    assert lazy == ["s0", "s2", "s5"] and set(totals) == {3}
    assert (await inproc.api.post("/api/apps/s2/stop")).status_code == 200
    stopped, totals = await _walk(inproc.api, status="stopped")
    assert stopped == ["s2"] and totals == [1]
    none, totals = await _walk(inproc.api, status="error")
    assert none == [] and totals == [0]
    # status with the other filters
    assert (await _walk(inproc.api, status="running", prefix="s3"))[0] == ["s3"]
    assert (await _walk(inproc.api, status="running", environment="local"))[0] == running
    assert (await _walk(inproc.api, status="running", environment="other"))[0] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "٣"}, "limit"),  # a digit, but not an ASCII one
        ({"cursor": "!!"}, "cursor"),
        ({"cursor": encode_cursor("x") + "A"}, "cursor"),
        ({"cursor": "Tk9QRQ"}, "cursor"),  # base64 of "NOPE": not an app name
        ({"status": "sleepy"}, "status"),
        ({"environment": "a b"}, "environment"),
        ({"prefix": "A"}, "prefix"),
        ({"prefix": "x" * 41}, "prefix"),
        ({"sort": "name"}, "sort"),
    ],
)
async def test_bad_queries_name_the_parameter(
    inproc: InProc, params: dict[str, str], field: str
) -> None:
    r = await inproc.api.get("/api/apps", params=params)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["field"] == field


async def test_listing_needs_the_token(inproc: InProc) -> None:
    async with inproc.client() as anonymous:
        r = await anonymous.get("/api/apps", params={"limit": "1"})
    assert r.status_code == 401


# --- the CLI ---------------------------------------------------------------------------


def test_cli_pages_through_and_filters(servers: ServerFactory) -> None:
    s = servers.start()
    for name in ("crm", "crm_eu", "shop", "blog"):
        ok(run(s, "apps", "create", name))
    ok(run(s, "apps", "start", "shop"))
    listed = json.loads(ok(run(s, "apps", "list", "--json")).stdout)
    assert [a["name"] for a in listed["apps"]] == ["blog", "crm", "crm_eu", "shop"]
    assert listed["total"] == 4
    table = ok(run(s, "apps", "list", "--prefix", "crm")).stdout
    assert "crm_eu" in table and "shop" not in table and "of" not in table
    running = ok(run(s, "apps", "list", "--status", "running")).stdout
    assert "shop" in running and "crm" not in running
    two = ok(run(s, "apps", "list", "--limit", "2")).stdout
    assert "blog" in two and "crm " in two and "shop" not in two
    assert "(2 of 4 shown" in two
    assert ok(run(s, "apps", "list", "--prefix", "zz")).stdout.startswith("no apps match")
    bad = run(s, "apps", "list", "--status", "sleepy")
    assert bad.returncode != 0 and "status" in bad.stderr
    usage = run(s, "apps", "list", "--limit", "0")
    assert usage.returncode == 2 and "--limit" in usage.stderr
