"""The plugin contract with real processes: what the package installs, a third-party
plugin loaded through the entry-point group, its failures kept to itself in both modes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx

from tests.cluster import Cluster, wait_for
from tests.conftest import REDIS_URL
from tests.plugin_dist import install_plugin
from tests.servers import AUTH, ROOT, ServerFactory, free_port
from tests.test_tenants import create

FLAKY = """
    from nocosup import hookimpl


    @hookimpl
    def app_status_changed(app, status, error):
        raise RuntimeError(f"flaky on purpose ({app.name} {status.value})")


    @hookimpl
    async def after_app_start(app):
        raise RuntimeError("flaky after start on purpose")
"""

ASYNC_FACTORY = """
    from nocosup import hookimpl


    @hookimpl
    async def app_factory(app):
        return None
"""

FAILURE = "plugin 'flaky_listener' failed in hook app_status_changed; carrying on"


def plugin_env(site: Path, name: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{ROOT}:{site}", "NOCOSUP_LOAD_PLUGINS": name}


def test_the_wheel_installs_no_top_level_plugins_package(tmp_path: Path) -> None:
    """Built from a copy of what the wheel is made of: setuptools rewrites nocosup.egg-info
    in the source tree, which servers started meanwhile (PYTHONPATH=ROOT) read their entry
    points from."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    for folder in ("nocosup", "plugins"):
        shutil.copytree(ROOT / folder, source / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip, "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    [wheel] = tmp_path.glob("nocosup-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        declared = whl.read(entry_points).decode()
    assert tops == {"nocosup", "nocosup_supervisor", "nocosup_worker"} | {
        "nocosup_starter",
        "nocosup_webui",
    }
    assert "nocosup_webui/static/app.js" in names
    for plugin in ("nocosup_supervisor", "nocosup_worker", "nocosup_starter", "nocosup_webui"):
        assert f"{plugin} = {plugin}" in declared


def test_plugins_is_not_importable_outside_the_repository(tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u; print(u.find_spec('plugins'), u.find_spec('nocosup_webui'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "None" and out[1] != "None"


async def test_a_failing_plugin_changes_nothing_in_shared_memory(
    servers: ServerFactory, tmp_path: Path
) -> None:
    site = install_plugin(tmp_path / "site", "flaky_listener", FLAKY)
    server = servers.start(**plugin_env(site, "flaky_listener"))
    async with server.admin() as c:
        plugins = {p["name"]: p for p in (await c.get("/api/plugins")).json()["plugins"]}
        assert plugins["flaky_listener"]["builtin"] is False
        assert plugins["flaky_listener"]["version"] == "0.1"
        await create(c, "steady")
        r = await c.get("/apps/steady/api/info")
        assert r.status_code == 200 and r.json()["app"] == "steady"
        apps = (await c.get("/api/apps")).json()["apps"]
        assert [(a["name"], a["statuses"], a["errors"]) for a in apps] == [
            ("steady", {"local": "running"}, {})
        ]
    await wait_for(lambda: _logged(server.log, FAILURE))
    text = server.log.read_text()
    assert "RuntimeError: flaky on purpose (steady running)" in text
    assert "plugin 'flaky_listener' failed in hook after_app_start" in text


async def test_a_failing_plugin_changes_nothing_in_multi_environment_mode(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, tmp_path: Path
) -> None:
    site = install_plugin(tmp_path / "site", "flaky_listener", FLAKY)
    cluster = Cluster(servers, pg_env, redis_prefix, REDIS_URL)
    supervisor = cluster.start_supervisor(**plugin_env(site, "flaky_listener"))
    worker = cluster.start_worker("env_a", **plugin_env(site, "flaky_listener"))
    async with supervisor.admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "steady", environments=["env_a"])
        r = await c.post("/api/apps/steady/start")
        assert r.status_code == 200, r.text
        assert (await c.get("/apps/steady/api/info")).json()["environment"] == "env_a"
        apps = (await c.get("/api/apps")).json()["apps"]
        assert [(a["name"], a["statuses"], a["errors"]) for a in apps] == [
            ("steady", {"env_a": "running"}, {})
        ]
    # the worker's own hook failed, and so did the supervisor's on the relayed report
    await wait_for(lambda: _logged(worker.log, FAILURE))
    await wait_for(lambda: _logged(supervisor.log, FAILURE))


async def _logged(path: Path, text: str) -> bool:
    return await asyncio.to_thread(_contains, path, text)


def _contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def test_an_async_first_result_hook_stops_serve_with_exit_2(
    servers: ServerFactory, tmp_path: Path
) -> None:
    site = install_plugin(tmp_path / "site", "async_factory", ASYNC_FACTORY)
    env = servers.env(**plugin_env(site, "async_factory"))
    proc = subprocess.run(
        [sys.executable, "-m", "nocosup", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "plugin 'async_factory': hook app_factory is a first-result hook" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_disable_plugins_takes_out_a_builtin(servers: ServerFactory) -> None:
    server = servers.start(NOCOSUP_DISABLE_PLUGINS="nocosup_webui")
    assert httpx.get(server.url + "/").status_code == 404
    plugins = httpx.get(server.url + "/api/plugins", headers=AUTH).json()["plugins"]
    names = {p["name"] for p in plugins}
    assert "nocosup_webui" not in names and "nocosup_supervisor" in names
