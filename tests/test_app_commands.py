"""Maintenance commands: offered by plugins per app, run where the app runs, shown as
``commanding`` meanwhile (tenant requests 503 APP_COMMANDING), the previous status after;
the starter's ``upgrade`` in shared memory, through a worker, and from the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nocosup import hookimpl
from nocosup.appcommands import AppCommand, CommandRun
from nocosup.appctx import AppContext
from tests.cluster import Cluster
from tests.conftest import REDIS_URL
from tests.inproc import InProc, inproc_settings, running_host
from tests.servers import ServerFactory
from tests.test_admin_api import assert_error
from tests.test_cli import ok, run
from tests.test_tenants import create


class Maintenance:
    """A plugin offering three commands to apps whose options ask for them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def _slow(self, run: CommandRun, args: dict[str, Any]) -> None:
        self.seen.append((run.app.name, args))
        run.progress("step 1 of 2: copying")
        await self.release.wait()
        run.progress("step 2 of 2: done")

    async def _boom(self, run: CommandRun, args: dict[str, Any]) -> None:
        raise RuntimeError("the index is corrupt")

    @hookimpl
    def register_app_commands(self, app: AppContext) -> list[AppCommand] | None:
        if not app.options.get("maintained"):
            return None
        return [
            AppCommand("reindex", "Rebuild the search index.", self._slow),
            AppCommand("boom", "Fails on purpose.", self._boom),
        ]


@pytest.fixture
async def maintained(tmp_path: Path) -> AsyncIterator[tuple[InProc, Maintenance]]:
    plugin = Maintenance()
    async with running_host(inproc_settings(tmp_path), [plugin]) as h:
        await create(h.api, "crm", options={"maintained": True})
        yield h, plugin


async def test_a_command_shows_commanding_then_the_previous_status(
    maintained: tuple[InProc, Maintenance],
) -> None:
    h, plugin = maintained
    listed = (await h.api.get("/api/apps/crm/commands")).json()
    assert listed == {
        "commands": [
            {"name": "boom", "description": "Fails on purpose."},
            {"name": "reindex", "description": "Rebuild the search index."},
        ]
    }
    assert (await h.api.post("/api/apps/crm/start")).status_code == 200
    body = {"command": "reindex", "args": {"full": True}}
    running = asyncio.create_task(h.api.post("/api/apps/crm/commands", json=body))

    async def commanding() -> dict[str, Any]:
        for _ in range(100):
            app = (await h.api.get("/api/apps/crm")).json()
            if app["statuses"] == {"local": "commanding"}:
                return dict(app)
            await asyncio.sleep(0.02)
        raise AssertionError("the app never showed commanding")

    app = await commanding()
    assert app["errors"] == {"local": "step 1 of 2: copying"}
    async with h.client() as anon:
        r = await anon.get("/apps/crm/api/info")
        assert_error(r, 503, "APP_COMMANDING")
        assert "step 1 of 2: copying" in r.json()["error"]["message"]
        assert r.headers["Retry-After"] == "5"
        # an admin start waits for the command (one operation on an app at a time)
        start = asyncio.create_task(h.api.post("/api/apps/crm/start"))
        await asyncio.sleep(0.2)
        assert not start.done()
        plugin.release.set()
        r = await running
        assert r.status_code == 200, r.text
        assert r.json()["statuses"] == {"local": "running"}
        assert r.json()["results"]["local"]["ok"] is True
        assert (await start).status_code == 200
        assert (await anon.get("/apps/crm/api/info")).status_code == 200
    assert plugin.seen == [("crm", {"full": True})]


async def test_a_failing_command_leaves_the_app_in_error(
    maintained: tuple[InProc, Maintenance],
) -> None:
    h, _ = maintained
    r = await h.api.post("/api/apps/crm/commands", json={"command": "boom"})
    assert_error(r, 502, "COMMAND_FAILED")
    assert "the index is corrupt" in r.json()["error"]["message"]
    app = (await h.api.get("/api/apps/crm")).json()
    assert app["statuses"] == {"local": "error"}
    assert "boom failed: RuntimeError: the index is corrupt" in app["errors"]["local"]
    # a start gets it running again
    assert (await h.api.post("/api/apps/crm/start")).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "vacuum"}, "command"),
        ({"command": "Re index"}, "command"),
        ({}, "command"),
        ({"command": "reindex", "args": [1]}, "args"),
        ({"command": "reindex", "when": "now"}, "when"),
    ],
)
async def test_bad_command_requests_name_the_field(
    maintained: tuple[InProc, Maintenance], body: dict[str, Any], field: str
) -> None:
    h, plugin = maintained
    r = await h.api.post("/api/apps/crm/commands", json=body)
    assert_error(r, 422, "VALIDATION_ERROR")
    assert r.json()["error"]["field"] == field
    if field == "command" and body.get("command") == "vacuum":
        assert "boom, reindex" in r.json()["error"]["message"]
    assert plugin.seen == []


async def test_apps_without_commands_and_missing_apps(
    maintained: tuple[InProc, Maintenance],
) -> None:
    h, _ = maintained
    await create(h.api, "plain")
    assert (await h.api.get("/api/apps/plain/commands")).json() == {"commands": []}
    r = await h.api.post("/api/apps/plain/commands", json={"command": "reindex"})
    assert_error(r, 422, "VALIDATION_ERROR")
    assert "it has: none" in r.json()["error"]["message"]
    assert_error(await h.api.get("/api/apps/ghost/commands"), 404, "APP_NOT_FOUND")


async def test_the_starter_upgrades_its_schema(inproc: InProc) -> None:
    await create(inproc.api, "shop", template="starter")
    listed = (await inproc.api.get("/api/apps/shop/commands")).json()["commands"]
    assert [c["name"] for c in listed] == ["upgrade"]
    async with inproc.client() as anon:
        assert (await anon.get("/apps/shop/api/schema")).json() == {"version": 1, "latest": 3}
        r = await inproc.api.post("/api/apps/shop/commands", json={"command": "upgrade"})
        assert r.status_code == 200, r.text
        assert (await anon.get("/apps/shop/api/schema")).json() == {"version": 3, "latest": 3}
        # again: nothing left to do, and the app serves as before
        r = await inproc.api.post("/api/apps/shop/commands", json={"command": "upgrade"})
        assert r.status_code == 200
        assert r.json()["statuses"] == {"local": "running"}
        bad = {"command": "upgrade", "args": {"to": 2}}
        r = await inproc.api.post("/api/apps/shop/commands", json=bad)
        assert_error(r, 502, "COMMAND_FAILED")
        assert "upgrade takes no arguments" in r.json()["error"]["message"]


async def test_upgrade_runs_on_the_worker(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    sup = cluster.start_supervisor()
    cluster.start_worker("env_a")
    async with sup.admin() as c, sup.client() as anon:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "shop", template="starter", environments=["env_a"])
        assert (await anon.get("/apps/shop/api/schema")).json()["version"] == 1
        r = await c.post("/api/apps/shop/commands", json={"command": "upgrade"})
        assert r.status_code == 200, r.text
        assert r.json()["results"]["env_a"]["ok"] is True
        assert r.json()["statuses"] == {"env_a": "running"}
        assert (await anon.get("/apps/shop/api/schema")).json()["version"] == 3


def test_the_cli_lists_and_runs_commands(servers: ServerFactory) -> None:
    s = servers.start()
    ok(run(s, "apps", "create", "shop", "--template", "starter"))
    listed = ok(run(s, "apps", "commands", "shop")).stdout
    assert "upgrade" in listed and "schema migrations" in listed
    done = ok(run(s, "apps", "run", "shop", "upgrade")).stdout
    assert done.startswith("shop ran upgrade:")
    as_json = json.loads(ok(run(s, "apps", "run", "shop", "upgrade", "--json")).stdout)
    assert as_json["results"]["local"]["ok"] is True
    bad = run(s, "apps", "run", "shop", "vacuum")
    assert bad.returncode == 1 and "no command 'vacuum'" in bad.stderr
    usage = run(s, "apps", "run", "shop", "upgrade", "--arg", "x")
    assert usage.returncode == 2 and "KEY=JSON_VALUE" in usage.stderr
