"""The admin API's OpenAPI document: valid, complete, and held to a live supervisor by
schemathesis (no 5xx, no answer its schema does not allow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from tests.inproc import InProc, inproc_settings, running_host
from tests.servers import ADMIN_TOKEN, ServerFactory


async def test_the_document_is_valid_openapi_3_1(inproc: InProc) -> None:
    async with inproc.client() as anonymous:
        assert (await anonymous.get("/api/openapi.json")).status_code == 401
    r = await inproc.api.get("/api/openapi.json")
    assert r.status_code == 200
    document = r.json()
    assert document["openapi"] == "3.1.0"
    validate(document)


def _served(inproc: InProc) -> set[str]:
    """The paths of the host's own HTTP routes (the static files' mount aside)."""
    return {
        r.path
        for r in inproc.host.router.routes
        if isinstance(r, Route) and not isinstance(r, Mount)
    }


async def test_every_route_is_documented_and_nothing_else(inproc: InProc) -> None:
    document = (await inproc.api.get("/api/openapi.json")).json()
    documented = set(document["paths"])
    assert documented == _served(inproc) - {"/"}  # the page is HTML, not API
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"], f"{method.upper()} {path} has no responses"


async def test_routes_of_a_disabled_plugin_leave_the_document(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_DISABLE_PLUGINS="nocosup_webui")
    async with running_host(settings) as host:
        paths = set((await host.api.get("/api/openapi.json")).json()["paths"])
    assert "/api/apps" in paths
    assert not paths & {"/api/login", "/api/logout", "/api/events"}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    servers: ServerFactory, tmp_path: Path
) -> None:
    server = servers.start()
    checks = "not_a_server_error,status_code_conformance,content_type_conformance"
    checks += ",response_schema_conformance"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/api/openapi.json"),
        *("-H", f"Authorization: Bearer {ADMIN_TOKEN}", "--checks", checks),
        # an endless event stream has no end to check
        *("--exclude-path", "/api/events"),
        *("--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--workers", "1"),
        # a fixed seed: the same requests every run, so a failure here is reproducible
        *("--seed", "20261129", "--generation-database", ":memory:", "--no-color"),
        *("--request-timeout", "30"),
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # 14 + DELETE /api/environments/{name}, GET /api/templates, GET and POST commands,
    # GET /metrics, POST /api/apps/{name}/move
    assert "Tested: 20" in run.stdout
