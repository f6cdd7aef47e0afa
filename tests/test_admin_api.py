"""The admin API: auth, CRUD and a clear 4xx for every bad input (in process), and the
start-up behaviour of a real server (generated token, configuration errors, exit codes)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.inproc import InProc
from tests.servers import ADMIN_TOKEN, ROOT, ServerFactory


def assert_error(resp: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert error.get("field") == field, error


async def test_every_api_route_needs_the_token(inproc: InProc) -> None:
    async with inproc.client() as c:
        calls = [
            ("GET", "/api/apps"),
            ("POST", "/api/apps"),
            ("GET", "/api/apps/x"),
            ("PATCH", "/api/apps/x"),
            ("DELETE", "/api/apps/x"),
            ("POST", "/api/apps/x/start"),
            ("POST", "/api/apps/x/stop"),
            ("GET", "/api/environments"),
            ("GET", "/api/plugins"),
        ]
        for method, path in calls:
            assert_error(await c.request(method, path), 401, "UNAUTHORIZED")
            wrong = {"Authorization": "Bearer nope"}
            assert_error(await c.request(method, path, headers=wrong), 401, "UNAUTHORIZED")
            basic = {"Authorization": f"Basic {ADMIN_TOKEN}"}
            assert_error(await c.request(method, path, headers=basic), 401, "UNAUTHORIZED")
        # health endpoints are open
        assert (await c.get("/healthz")).json()["status"] == "ok"
        assert (await c.get("/readyz")).json()["status"] == "ready"


async def test_crud_round_trip(inproc: InProc) -> None:
    async with inproc.admin() as c:
        r = await c.post(
            "/api/apps", json={"name": "crm", "title": "CRM", "options": {"color": "blue"}}
        )
        assert r.status_code == 201, r.text
        app = r.json()
        assert r.headers["location"] == "/api/apps/crm"
        assert app["name"] == "crm" and app["title"] == "CRM"
        assert app["environments"] == ["local"]
        assert app["options"] == {
            "color": "blue",
            "startMode": "on_first_request",
            "dbConnType": "new_database",
        }
        assert app["desired_state"] == "running"
        assert app["statuses"] == {"local": "idle"}
        assert app["created_at"] and app["updated_at"]

        listed = (await c.get("/api/apps")).json()["apps"]
        assert [a["name"] for a in listed] == ["crm"]
        assert (await c.get("/api/apps/crm")).json()["title"] == "CRM"

        r = await c.patch(
            "/api/apps/crm", json={"title": "Sales", "options": {"color": None, "size": 3}}
        )
        assert r.status_code == 200, r.text
        patched = r.json()
        assert patched["title"] == "Sales"
        assert patched["options"]["size"] == 3 and "color" not in patched["options"]
        assert patched["updated_at"] >= app["updated_at"]

        r = await c.post("/api/apps/crm/start")
        assert r.status_code == 200, r.text
        assert r.json()["statuses"] == {"local": "running"}
        assert r.json()["results"]["local"]["ok"] is True

        r = await c.post("/api/apps/crm/stop", params={"wait": "false"})
        assert r.status_code == 202, r.text

        envs = (await c.get("/api/environments")).json()["environments"]
        assert envs[0]["name"] == "local" and envs[0]["status"] == "online"

        r = await c.delete("/api/apps/crm")
        assert r.status_code == 200 and r.json()["removed"] is True
        assert_error(await c.get("/api/apps/crm"), 404, "APP_NOT_FOUND")


BAD_CREATES: list[tuple[Any, str, str | None]] = [
    ({"title": "no name"}, "VALIDATION_ERROR", "name"),
    ({"name": "Upper"}, "VALIDATION_ERROR", "name"),
    ({"name": "1digit"}, "VALIDATION_ERROR", "name"),
    ({"name": "_under"}, "VALIDATION_ERROR", "name"),
    ({"name": "a" * 41}, "VALIDATION_ERROR", "name"),
    ({"name": "sp ace"}, "VALIDATION_ERROR", "name"),
    ({"name": "semi;colon"}, "VALIDATION_ERROR", "name"),
    ({"name": 'quo"te'}, "VALIDATION_ERROR", "name"),
    ({"name": "nl2\n"}, "VALIDATION_ERROR", "name"),  # "$" would match before the newline
    ({"name": 12}, "VALIDATION_ERROR", "name"),
    ({"name": "ok", "title": ""}, "VALIDATION_ERROR", "title"),
    ({"name": "ok", "title": 5}, "VALIDATION_ERROR", "title"),
    ({"name": "ok", "title": "t" * 201}, "VALIDATION_ERROR", "title"),
    ({"name": "ok", "options": []}, "VALIDATION_ERROR", "options"),
    ({"name": "ok", "options": {"startMode": "never"}}, "VALIDATION_ERROR", "options.startMode"),
    (
        {"name": "ok", "options": {"dbConnType": "new_schema"}},
        "VALIDATION_ERROR",
        "options.dbConnType",
    ),
    ({"name": "ok", "options": {"dbConnType": "other"}}, "VALIDATION_ERROR", "options.dbConnType"),
    ({"name": "ok", "environments": ["mars"]}, "VALIDATION_ERROR", "environments"),
    ({"name": "ok", "environments": []}, "VALIDATION_ERROR", "environments"),
    ({"name": "ok", "environments": ["local", "local"]}, "VALIDATION_ERROR", "environments"),
    ({"name": "ok", "colour": "red"}, "VALIDATION_ERROR", "colour"),
    (["name", "ok"], "INVALID_JSON", None),
    ("just a string", "INVALID_JSON", None),
]


@pytest.mark.parametrize(("body", "code", "field"), BAD_CREATES)
async def test_bad_create_is_422_and_creates_nothing(
    inproc: InProc, body: Any, code: str, field: str | None
) -> None:
    async with inproc.admin() as c:
        assert_error(await c.post("/api/apps", json=body), 422, code, field)
        assert (await c.get("/api/apps")).json()["apps"] == []
    assert list(inproc.storage.glob("databases/*")) == []


async def test_malformed_json_and_other_bad_requests(inproc: InProc) -> None:
    async with inproc.admin() as c:
        raw = {"content-type": "application/json"}
        assert_error(await c.post("/api/apps", content=b"{nope", headers=raw), 422, "INVALID_JSON")
        assert_error(
            await c.post("/api/apps", content=b"\xff\xfe", headers=raw), 422, "INVALID_JSON"
        )
        # a body over 1 MiB is refused for its size, valid JSON and a valid app as it is
        big = {"name": "big", "options": {"pad": "x" * (1 << 20)}}
        r = await c.post("/api/apps", json=big)
        assert_error(r, 413, "PAYLOAD_TOO_LARGE")
        assert_error(await c.get("/api/apps/big"), 404, "APP_NOT_FOUND")
        too_big = b"x" * ((1 << 20) + 1)
        assert_error(await c.post("/api/apps", content=too_big), 413, "PAYLOAD_TOO_LARGE")
        assert (await c.post("/api/apps", json={"name": "dup"})).status_code == 201
        assert_error(await c.post("/api/apps", json={"name": "dup"}), 409, "APP_EXISTS")
        assert_error(
            await c.patch("/api/apps/dup", json={"name": "x"}), 422, "VALIDATION_ERROR", "name"
        )
        assert_error(
            await c.patch("/api/apps/dup", json={"options": 3}), 422, "VALIDATION_ERROR", "options"
        )
        assert_error(
            await c.patch("/api/apps/dup", json={"options": {"dbConnType": "new_schema"}}),
            422,
            "VALIDATION_ERROR",
            "options.dbConnType",
        )
        assert_error(await c.patch("/api/apps/dup", content=b"[", headers=raw), 422, "INVALID_JSON")
        assert_error(await c.patch("/api/apps/ghost", json={"title": "x"}), 404, "APP_NOT_FOUND")
        assert_error(await c.get("/api/apps/ghost"), 404, "APP_NOT_FOUND")
        assert_error(await c.get("/api/apps/BAD!"), 422, "VALIDATION_ERROR", "name")
        assert_error(await c.delete("/api/apps/ghost"), 404, "APP_NOT_FOUND")
        assert_error(await c.post("/api/apps/ghost/start"), 404, "APP_NOT_FOUND")
        assert_error(await c.post("/api/apps/ghost/stop"), 404, "APP_NOT_FOUND")
        assert_error(
            await c.post("/api/apps/dup/start", params={"wait": "maybe"}),
            422,
            "VALIDATION_ERROR",
            "wait",
        )
        assert_error(
            await c.delete("/api/apps/dup", params={"drop_database": "perhaps"}),
            422,
            "VALIDATION_ERROR",
            "drop_database",
        )
        r = await c.put("/api/apps/dup", json={})
        assert_error(r, 405, "METHOD_NOT_ALLOWED")
        assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
        assert (await c.head("/api/apps/dup")).status_code == 200
        assert_error(await c.get("/api/nothing-here"), 404, "NOT_FOUND")
        # the app that failed to be patched or deleted is untouched
        app = (await c.get("/api/apps/dup")).json()
        assert app["version"] == 1


async def test_generated_token_is_kept_in_storage(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_ADMIN_TOKEN="")
    token_file = server.storage / "admin_token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert str(token_file.resolve()) in server.tail()
    async with server.client(headers={"Authorization": f"Bearer {token}"}) as c:
        assert (await c.get("/api/apps")).status_code == 200
    server.restart()
    assert token_file.read_text().strip() == token


def test_bad_configuration_exits_with_a_message(servers: ServerFactory) -> None:
    env = servers.env(APP_MODE="boss")
    proc = subprocess.run(
        [sys.executable, "-m", "nocosup", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "APP_MODE must be one of supervisor, worker; got 'boss'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_start_up_failure_exits_3_with_the_reason(servers: ServerFactory) -> None:
    env = servers.env(DB_DIALECT="postgres", DB_HOST="127.0.0.1", DB_PORT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "nocosup", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 3
    assert "cannot connect to the registry database" in proc.stderr
    assert "Traceback" not in proc.stderr
