"""The host mounted in a user's app: tenants see a clean scope with the whole public prefix,
and the host joins the outer app's lifespan (tenants stop with it)."""

from __future__ import annotations

import contextlib
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from nocosup.host import create_host
from nocosup.lifespan import LifespanRunner
from tests.inproc import BASE_URL, inproc_settings
from tests.plugin_dist import install_templates
from tests.servers import AUTH, ROOT, ServerFactory, free_port

WHERE = '''
"""A tenant that says where it thinks it is, and logs its lifespan to a file."""
import contextlib

from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route


def build(ctx):
    log = ctx.storage_dir / "lifespan.txt"

    @contextlib.asynccontextmanager
    async def lifespan(app):
        with log.open("a") as fh:
            fh.write("startup\\n")
        yield
        with log.open("a") as fh:
            fh.write("shutdown\\n")

    async def here(request):
        return JSONResponse(
            {
                "url_for": str(request.url_for("here")),
                "base_url": str(request.base_url),
                "url": str(request.url),
                "root_path": request.scope["root_path"],
                "prefix": ctx.prefix,
                "keys": sorted(k for k in request.scope if k != "app"),
            }
        )

    async def back(request):
        return RedirectResponse(request.url_for("here"), 303)

    routes = [Route("/here", here, name="here"), Route("/back", back)]
    return Starlette(routes=routes, lifespan=lifespan)
'''

OUTER = """
from fastapi import FastAPI

from nocosup import create_host

host = create_host(root_path="/tenants")
app = FastAPI(lifespan=host.lifespan)


@app.get("/readyz")
def ready() -> dict[str, bool]:
    return {"ready": host.started}


app.mount("/tenants", host)
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    path = install_templates(
        tmp_path / "site", "where-template", {"where": WHERE}, {"where": "where:build"}
    )
    (path / "outer_app.py").write_text(textwrap.dedent(OUTER))
    sys.path.insert(0, str(path))
    try:
        yield path
    finally:
        sys.path.remove(str(path))
        sys.modules.pop("where", None)


def _outer_fastapi(host: object) -> FastAPI:
    """A user's FastAPI app with routes of its own and the host mounted at /tenants."""
    app = FastAPI()

    @app.get("/hello/{who}", name="hello")
    def hello(who: str) -> dict[str, str]:
        return {"hello": who}

    app.mount("/tenants", host)  # type: ignore[arg-type]
    return app


@contextlib.asynccontextmanager
async def _served(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` with its lifespan entered, and a client of it."""
    runner = LifespanRunner(app, "outer")  # type: ignore[arg-type]
    await runner.startup()
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client
    finally:
        await runner.shutdown()


async def test_a_mounted_tenant_sees_a_clean_scope_and_its_whole_prefix(
    tmp_path: Path, site: Path
) -> None:
    host = create_host(inproc_settings(tmp_path), root_path="/tenants")
    outer = _outer_fastapi(host)
    outer.router.lifespan_context = host.lifespan
    async with _served(outer) as client:
        new = {"name": "w1", "template": "where"}
        r = await client.post("/tenants/api/apps", json=new, headers=AUTH)
        assert r.status_code == 201, r.text
        r = await client.get("/tenants/apps/w1/here?x=1")
        assert r.status_code == 200, r.text
        seen = r.json()
        assert seen["url_for"] == f"{BASE_URL}/tenants/apps/w1/here"
        assert seen["base_url"] == f"{BASE_URL}/tenants/apps/w1/"
        assert seen["url"] == f"{BASE_URL}/tenants/apps/w1/here?x=1"
        assert seen["root_path"] == seen["prefix"] == "/tenants/apps/w1"
        # nothing the outer FastAPI put in the scope reached the tenant
        assert not {"app_root_path", "fastapi_astack", "fastapi_inner_astack"} & set(seen["keys"])
        r = await client.get("/tenants/apps/w1/back")
        assert r.status_code == 303
        assert r.headers["location"] == f"{BASE_URL}/tenants/apps/w1/here"
        # the outer app's own routes are untouched
        assert (await client.get("/hello/you")).json() == {"hello": "you"}
        log = host.settings.storage_dir / "apps" / "w1" / "lifespan.txt"
        assert log.read_text() == "startup\n"
    # the outer lifespan ended: the host stopped its tenants
    assert log.read_text() == "startup\nshutdown\n"
    assert not host.started


async def test_the_host_lifespan_inside_a_lifespan_of_the_users_own(
    tmp_path: Path, site: Path
) -> None:
    host = create_host(inproc_settings(tmp_path), root_path="/t")
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("outer up")
        async with host.lifespan():
            yield
        events.append("outer down")

    async def home(request: object) -> JSONResponse:
        return JSONResponse({"home": True})

    outer = Starlette(routes=[Route("/", home), Mount("/t", host)], lifespan=lifespan)
    async with _served(outer) as client:
        assert host.started
        r = await client.post("/t/api/apps", json={"name": "w2", "template": "where"}, headers=AUTH)
        assert r.status_code == 201
        seen = (await client.get("/t/apps/w2/here")).json()
        assert seen["url_for"] == f"{BASE_URL}/t/apps/w2/here"
        assert seen["base_url"] == f"{BASE_URL}/t/apps/w2/"
        assert (await client.get("/")).json() == {"home": True}
    assert events == ["outer up", "outer down"]
    log = host.settings.storage_dir / "apps" / "w2" / "lifespan.txt"
    assert log.read_text() == "startup\nshutdown\n"


async def test_sigterm_to_uvicorn_serving_a_mounting_app_stops_the_tenants(
    servers: ServerFactory, site: Path
) -> None:
    port = free_port()
    command = ("-m", "uvicorn", "outer_app:app", "--host", "127.0.0.1", "--port", str(port))
    server = servers.start_command(command, port, PYTHONPATH=f"{ROOT}:{site}")
    async with server.client(headers=AUTH) as client:
        r = await client.post("/tenants/api/apps", json={"name": "w3", "template": "where"})
        assert r.status_code == 201, r.text
        seen = (await client.get("/tenants/apps/w3/here")).json()
        assert seen["url_for"] == f"{server.url}/tenants/apps/w3/here"
        assert seen["prefix"] == "/tenants/apps/w3"
    log = server.storage / "apps" / "w3" / "lifespan.txt"
    assert log.read_text() == "startup\n"
    # uvicorn re-raises the signal once it has shut down cleanly: -SIGTERM, not a kill
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.tail()
    assert log.read_text() == "startup\nshutdown\n", server.tail()
