"""The example templates under ``examples/`` against the real frameworks (FastAPI,
Litestar, datasette), in the three placements a tenant can have: in the host's process
(shared memory), behind the supervisor's proxy on a worker, and with the host mounted in
a user's FastAPI app. In each: links and assets resolve, redirects keep the public
address, and the OpenAPI "try it out" server URL reaches the app."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from nocosup.host import create_host
from nocosup.lifespan import LifespanRunner
from tests.cluster import Cluster
from tests.conftest import REDIS_URL
from tests.examples import EXAMPLES, NAMES, install_examples
from tests.inproc import BASE_URL, inproc_settings, running_host
from tests.servers import AUTH, ROOT, ServerFactory

#: Attributes whose URLs a browser follows or loads.
_LINK = re.compile(r"""(?:href|src|action)=["']([^"'#][^"']*)["']""")


@pytest.fixture(scope="module")
def example_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """The examples "installed" (see tests/examples.py) and on ``sys.path``."""
    paths = install_examples(tmp_path_factory.mktemp("examples") / "site")
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield paths
    finally:
        for p in paths:
            sys.path.remove(str(p))


# --- what each example must do, wherever it is served ----------------------------------


async def check_fastapi(client: httpx.AsyncClient, public: str, prefix: str) -> None:
    """CRUD, the slash redirect, /docs and its OpenAPI document, and "try it out"."""
    app = public + prefix
    r = await client.get(prefix + "/")
    assert (r.status_code, r.headers["location"]) == (303, app + "/docs")
    r = await client.get(prefix + "/notes")  # FastAPI's trailing-slash redirect
    assert (r.status_code, r.headers["location"]) == (307, app + "/notes/")
    r = await client.post(prefix + "/notes/", json={"title": "first", "body": "hello"})
    assert r.status_code == 201, r.text
    note = r.json()
    assert r.headers["location"] == f"{app}/notes/{note['id']}"
    assert (await client.get(f"{prefix}/notes/{note['id']}")).json() == note
    r = await client.put(f"{prefix}/notes/{note['id']}", json={"title": "edited"})
    assert r.json() == {"id": note["id"], "title": "edited", "body": ""}
    assert (await client.get(prefix + "/notes/")).json() == [r.json()]
    assert (await client.delete(f"{prefix}/notes/{note['id']}")).status_code == 204
    assert (await client.get(f"{prefix}/notes/{note['id']}")).status_code == 404
    # /docs loads the document from under the prefix; its server is the prefix
    docs = await client.get(prefix + "/docs")
    assert docs.status_code == 200
    assert f"url: '{prefix}/openapi.json'" in docs.text
    await check_local_links(client, public, prefix, prefix + "/docs")
    document = (await client.get(prefix + "/openapi.json")).json()
    assert document["servers"] == [{"url": prefix}]
    await try_it_out(client, document["servers"][0]["url"], "/notes/", {"title": "t"})


async def check_litestar(client: httpx.AsyncClient, public: str, prefix: str) -> None:
    """The lifespan opened the database (rows persist), the redirect, the schema pages."""
    app = public + prefix
    r = await client.get(prefix + "/")
    assert (r.status_code, r.headers["location"]) == (303, app + "/items")
    r = await client.post(prefix + "/items", json={"name": "bolt"})
    assert r.status_code == 201, r.text
    item = r.json()
    assert (await client.get(f"{prefix}/items/{item['id']}")).json() == item
    assert item in (await client.get(prefix + "/items")).json()
    assert (await client.get(f"{prefix}/items/999999")).status_code == 404
    document = (await client.get(prefix + "/schema/openapi.json")).json()
    assert document["servers"] == [{"url": prefix}]
    swagger = await client.get(prefix + "/schema/swagger")
    assert swagger.status_code == 200
    await check_local_links(client, public, prefix, prefix + "/schema/swagger")
    await try_it_out(client, document["servers"][0]["url"], "/items", {"name": "nut"})


async def check_datasette(client: httpx.AsyncClient, public: str, prefix: str) -> None:
    """Every link and asset of datasette's pages, two clicks deep, resolves under the
    app's prefix; the seeded table is there."""
    r = await client.get(prefix + "/")
    assert r.status_code == 200
    database = re.search(rf'href="{re.escape(prefix)}/(nocosup_[a-z0-9_]+)"', r.text)
    assert database, r.text[:2000]
    table = await client.get(f"{prefix}/{database.group(1)}/notes.json?_shape=array")
    assert [row["title"] for row in table.json()] == ["Welcome", "Facets", "Export"]
    # datasette's own redirect (a trailing slash) stays under the prefix
    r = await client.get(f"{prefix}/{database.group(1)}/notes/")
    assert r.status_code == 302
    assert urljoin(public + prefix + "/", r.headers["location"]).startswith(public + prefix)
    await crawl(client, public, prefix, [prefix + "/", f"{prefix}/{database.group(1)}/notes"])


CHECKS = {
    "fastapi-notes": check_fastapi,
    "litestar-notes": check_litestar,
    "datasette": check_datasette,
}


async def try_it_out(
    client: httpx.AsyncClient, server: str, path: str, body: dict[str, str]
) -> None:
    """What Swagger UI's "try it out" sends: the document's server URL plus the path."""
    assert server.startswith("/")
    r = await client.post(server + path, json=body)
    assert r.status_code == 201, (server + path, r.status_code, r.text[:300])


def local_links(page_url: str, html: str, public: str) -> list[str]:
    """Absolute URLs of the links and assets of ``html`` on the app's own origin."""
    out = []
    origin = urlsplit(public)
    for link in _LINK.findall(html):
        link = link.replace("&amp;", "&")
        url = urlsplit(urljoin(page_url, link))
        if url.scheme in ("http", "https") and url.netloc == origin.netloc:
            out.append(url.geturl())
    return out


async def check_local_links(
    client: httpx.AsyncClient, public: str, prefix: str, page: str
) -> None:
    r = await client.get(page)
    for url in local_links(public + page, r.text, public):
        assert url.startswith(public + prefix + "/"), f"{page} links outside the app: {url}"
        got = await client.get(url[len(public) :])
        assert got.status_code < 400, (page, url, got.status_code)


async def crawl(
    client: httpx.AsyncClient, public: str, prefix: str, start: list[str], limit: int = 60
) -> None:
    """Follow local links breadth first (two levels, at most ``limit`` fetches)."""
    seen: set[str] = set()
    level = [public + p for p in start]
    for _depth in range(2):
        following: list[str] = []
        for url in level:
            if url in seen or len(seen) >= limit:
                continue
            seen.add(url)
            assert url.startswith(public + prefix + "/"), f"a link leaves the app: {url}"
            r = await client.get(url[len(public) :])
            assert r.status_code < 400, (url, r.status_code, r.text[:300])
            if "text/html" in r.headers.get("content-type", ""):
                following += local_links(url, r.text, public)
        level = following
    assert len(seen) > 10, seen  # the pages had links to follow


async def create_all(api: httpx.AsyncClient, prefix: str = "", **options: object) -> None:
    """One app per example: ``fa``, ``ls``, ``ds``."""
    for name, template in (("fa", "fastapi-notes"), ("ls", "litestar-notes"), ("ds", "datasette")):
        body: dict[str, object] = {"name": name, "template": template}
        if template == "datasette" and options.get("datasette"):
            body["options"] = options["datasette"]
        r = await api.post(prefix + "/api/apps", json=body)
        assert r.status_code == 201, r.text


async def check_all(client: httpx.AsyncClient, public: str, root: str = "") -> None:
    await check_fastapi(client, public, root + "/apps/fa")
    await check_litestar(client, public, root + "/apps/ls")
    await check_datasette(client, public, root + "/apps/ds")


# --- the three placements ----------------------------------------------------------------


async def test_examples_in_shared_memory_mode(tmp_path: Path, example_paths: list[Path]) -> None:
    async with running_host(inproc_settings(tmp_path)) as h:
        await create_all(h.api)
        async with h.client() as client:
            await check_all(client, BASE_URL)
        statuses = {a["name"]: a["statuses"] for a in (await h.api.get("/api/apps")).json()["apps"]}
        assert statuses == {n: {"local": "running"} for n in ("fa", "ls", "ds")}


async def test_examples_through_the_proxy(
    servers: ServerFactory,
    pg_env: dict[str, str],
    redis_prefix: str,
    example_paths: list[Path],
) -> None:
    """Supervisor and worker are separate processes; FastAPI and Litestar apps keep their
    data in PostgreSQL, datasette its SQLite file on the worker."""
    path = ":".join([str(ROOT), *(str(p) for p in example_paths)])
    # A first request imports FastAPI, Litestar or datasette inside the worker's event
    # loop: on a busy machine that can outlast the default heartbeat TTL (3 x 0.5 s)
    # and take env-a offline mid-test. Nothing here waits for a heartbeat to lapse.
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL, interval=2)
    supervisor = cluster.start_supervisor(PYTHONPATH=path)
    cluster.start_worker("env-a", PYTHONPATH=path)
    async with supervisor.admin() as api:
        await cluster.wait_environments(api, {"env-a": 1})
        await create_all(api, datasette={"dbProvisioner": "sqlite"})
        async with supervisor.client() as client:
            await check_all(client, supervisor.url)


async def test_examples_mounted_in_a_fastapi_app(
    tmp_path: Path, example_paths: list[Path]
) -> None:
    host = create_host(inproc_settings(tmp_path), root_path="/tenants")
    outer = FastAPI(lifespan=host.lifespan)

    @outer.get("/")
    def home() -> dict[str, str]:
        return {"home": "outer"}

    outer.mount("/tenants", host)
    async with _serving(outer) as client:
        await create_all(client, "/tenants")
        await check_all(client, BASE_URL, "/tenants")
        assert (await client.get("/")).json() == {"home": "outer"}


@contextlib.asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    runner = LifespanRunner(app, "outer")
    await runner.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as c:
            yield c
    finally:
        await runner.shutdown()


@pytest.mark.parametrize("name", NAMES)
def test_each_example_builds_a_wheel_with_its_template(tmp_path: Path, name: str) -> None:
    """The packages are real: pip builds each one (offline) and the wheel registers its
    template in the nocosup.templates group. Built from a copy: setuptools leaves build/
    and .egg-info folders in the source tree."""
    source = shutil.copytree(
        EXAMPLES / name,
        tmp_path / "src",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "-q", "-w", str(wheels), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert text.startswith("[nocosup.templates]\n")
    assert f"\n{TEMPLATE_OF[name]} = " in text


#: Example folder -> the template it registers.
TEMPLATE_OF = {
    "fastapi-notes": "fastapi-notes",
    "litestar-notes": "litestar-notes",
    "datasette-app": "datasette",
}
