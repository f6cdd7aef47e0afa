"""The plugin contract, in process: built-ins are entry points, roles are objects, one
plugin's failure stays its own, and what pluggy would accept but nocosup cannot call
correctly is refused when the plugin loads."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from nocosup import hookimpl
from nocosup.appctx import AppContext
from nocosup.errors import ConfigError
from nocosup.host import create_host
from nocosup.plugins import load_plugins
from nocosup.provisioning import SqliteProvisioner, TenantDatabase
from nocosup.role import Role
from nocosup.status import AppStatus
from tests.cluster import wait_for
from tests.inproc import inproc_settings, running_host

BUILTINS = {"nocosup_supervisor", "nocosup_worker", "nocosup_starter", "nocosup_webui"}


# --- what loads ----------------------------------------------------------------------


def test_builtins_load_as_entry_points(tmp_path: Path) -> None:
    hooks = load_plugins(inproc_settings(tmp_path))
    described = {p["name"]: p for p in hooks.describe()}
    assert BUILTINS <= set(described)
    for name in BUILTINS:
        assert described[name]["builtin"] is True
        assert described[name]["source"].startswith(f"entry point {name} (nocosup)")
    assert described["app_factory"]["builtin"] is False
    assert set(hooks.roles()) == {"supervisor", "worker"}


async def test_a_disabled_builtin_is_gone(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_DISABLE_PLUGINS="nocosup_webui")
    async with running_host(settings) as h:
        assert (await h.api.get("/")).status_code == 404
        names = {p["name"] for p in (await h.api.get("/api/plugins")).json()["plugins"]}
        assert "nocosup_webui" not in names and "nocosup_supervisor" in names
    async with running_host(inproc_settings(tmp_path)) as h:
        assert (await h.api.get("/")).status_code == 200


def test_disabling_an_unknown_plugin_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NOCOSUP_DISABLE_PLUGINS: no plugin named 'nope'"):
        load_plugins(inproc_settings(tmp_path, NOCOSUP_DISABLE_PLUGINS="nope"))


def test_a_disabled_role_without_replacement_is_a_config_error(tmp_path: Path) -> None:
    settings = inproc_settings(tmp_path, NOCOSUP_DISABLE_PLUGINS="nocosup_supervisor")
    with pytest.raises(ConfigError, match="no loaded plugin provides the 'supervisor' role"):
        create_host(settings)


# --- the role is an object -----------------------------------------------------------


class EchoGateway:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append((name, scope["root_path"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"fake {name}".encode()})


class FakeSupervisor(Role):
    """A stand-in role: the host must start it, route tenants to its gateway, stop it."""

    name = "supervisor"
    calls: list[str] = []

    async def start(self) -> None:
        FakeSupervisor.calls.append("start")
        self.gateway = EchoGateway()

    async def stop(self) -> None:
        FakeSupervisor.calls.append("stop")
        self.gateway = None


class ProvidesFakeSupervisor:
    @hookimpl
    def register_roles(self) -> list[type[Role]]:
        return [FakeSupervisor]


async def test_a_replacement_role_is_started_routed_to_and_stopped(tmp_path: Path) -> None:
    FakeSupervisor.calls = []
    settings = inproc_settings(tmp_path, NOCOSUP_DISABLE_PLUGINS="nocosup_supervisor")
    async with running_host(settings, [ProvidesFakeSupervisor()]) as h:
        assert isinstance(h.host.role, FakeSupervisor)
        r = await h.api.get("/apps/demo/anything")
        assert (r.status_code, r.text) == (200, "fake demo")
        assert h.host.role.gateway is not None
        assert h.host.role.gateway.seen == [("demo", "/apps/demo")]  # type: ignore[attr-defined]
        # the admin API belongs to the replaced role: it is gone with it
        assert (await h.api.get("/api/apps")).status_code == 404
        assert FakeSupervisor.calls == ["start"]
    assert FakeSupervisor.calls == ["start", "stop"]


def test_two_plugins_for_one_role_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both provide the 'supervisor' role"):
        create_host(inproc_settings(tmp_path), [ProvidesFakeSupervisor()])


class FailingRole(FakeSupervisor):
    async def start(self) -> None:
        FakeSupervisor.calls.append("start")
        raise ConfigError("cannot start on purpose")


class ProvidesFailingRole:
    @hookimpl
    def register_roles(self) -> list[type[Role]]:
        return [FailingRole]


async def test_a_role_that_fails_to_start_fails_the_lifespan_and_is_stopped(
    tmp_path: Path,
) -> None:
    FakeSupervisor.calls = []
    settings = inproc_settings(tmp_path, NOCOSUP_DISABLE_PLUGINS="nocosup_supervisor")
    host = create_host(settings, [ProvidesFailingRole()])
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "lifespan.startup"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await host({"type": "lifespan"}, receive, send)
    assert sent == [{"type": "lifespan.startup.failed", "message": "cannot start on purpose"}]
    assert FakeSupervisor.calls == ["start", "stop"]


# --- load-time checks ----------------------------------------------------------------


class AsyncFactory:
    @hookimpl
    async def app_factory(self, app: AppContext) -> Any:
        return None


class AsyncSelector:
    @hookimpl
    async def select_environment(
        self, app: AppContext, environments: list[dict[str, Any]], scope: Scope
    ) -> str | None:
        return None


class Misspelt:
    @hookimpl
    def app_stauts_changed(self, app: AppContext) -> None:
        pass


class WrapsANotification:
    @hookimpl(wrapper=True)
    def app_status_changed(self, app: AppContext, status: AppStatus, error: str | None) -> Any:
        return (yield)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (AsyncFactory(), "plugin 'AsyncFactory': hook app_factory is a first-result hook"),
        (AsyncSelector(), "plugin 'AsyncSelector': hook select_environment is a first-result"),
        (Misspelt(), "plugin 'Misspelt' is invalid: unknown hook 'app_stauts_changed'"),
        (WrapsANotification(), "plugin 'WrapsANotification': hook app_status_changed is a "),
    ],
)
def test_contract_violations_are_refused_at_load(
    tmp_path: Path, plugin: object, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_plugins(inproc_settings(tmp_path), [plugin])
    assert message in caught.value.message


# --- notifications ----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[tuple[str, str | None, AppStatus, str | None]] = []
        self.registry: list[tuple[str, str, str | None, Any]] = []

    @hookimpl
    def app_status_changed(self, app: AppContext, status: AppStatus, error: str | None) -> None:
        assert isinstance(status, AppStatus) and isinstance(app, AppContext)
        self.statuses.append((app.name, app.environment, status, error))

    @hookimpl
    def app_registered(self, app: AppContext) -> None:
        self.registry.append(("registered", app.name, app.environment, None))

    @hookimpl
    def app_updated(self, app: AppContext, changed: list[str]) -> None:
        self.registry.append(("updated", app.name, app.environment, changed))

    @hookimpl
    def app_unregistered(self, app: AppContext, database_dropped: bool) -> None:
        self.registry.append(("unregistered", app.name, app.environment, database_dropped))


class Broken:
    """Raises in every notification it implements."""

    @hookimpl
    def app_status_changed(self, app: AppContext, status: AppStatus, error: str | None) -> None:
        raise RuntimeError("status listener exploded")

    @hookimpl
    async def after_app_start(self, app: AppContext) -> None:
        raise RuntimeError("after start exploded")

    @hookimpl
    def app_registered(self, app: AppContext) -> None:
        raise RuntimeError("registry listener exploded")


async def test_a_failing_notification_is_logged_and_the_others_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    caplog.set_level(logging.ERROR, logger="nocosup.plugins")
    # pluggy calls the last registered first: Broken runs before Recorder every time
    async with running_host(inproc_settings(tmp_path), [recorder, Broken()]) as h:
        r = await h.api.post("/api/apps", json={"name": "calm"})
        assert r.status_code == 201, r.text
        r = await h.api.post("/api/apps/calm/start")
        assert r.status_code == 200 and r.json()["statuses"] == {"local": "running"}
        apps = (await h.api.get("/api/apps")).json()["apps"]
        assert [(a["name"], a["statuses"]) for a in apps] == [("calm", {"local": "running"})]
        await wait_for(
            lambda: _true(("calm", "local", AppStatus.RUNNING, None) in recorder.statuses)
        )
        assert ("registered", "calm", None, None) in recorder.registry
    failures = {
        (r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if r.name == "nocosup.plugins"
    }
    for hook in ("app_status_changed", "after_app_start", "app_registered"):
        assert (f"plugin 'Broken' failed in hook {hook}; carrying on", True) in failures


async def _true(value: bool) -> bool:
    return value


async def test_statuses_reach_plugins_in_order_as_the_enum(tmp_path: Path) -> None:
    recorder = Recorder()
    async with running_host(inproc_settings(tmp_path), [recorder]) as h:
        await h.api.post("/api/apps", json={"name": "seq"})
        await h.api.post("/api/apps/seq/start")
        await h.api.post("/api/apps/seq/stop")
        expected = [
            AppStatus.IDLE,  # created, wanted running, not booted yet
            AppStatus.PREPARING,
            AppStatus.INITIALIZING,
            AppStatus.INITIALIZED,
            AppStatus.RUNNING,
            AppStatus.STOPPING,
            AppStatus.STOPPED,
        ]
        await wait_for(lambda: _true(len(recorder.statuses) >= len(expected)))
    assert [s for _, _, s, _ in recorder.statuses] == expected


async def test_registry_events_fire_on_the_supervisor(tmp_path: Path) -> None:
    recorder = Recorder()
    async with running_host(inproc_settings(tmp_path), [recorder]) as h:
        await h.api.post("/api/apps", json={"name": "reg", "title": "one"})
        await h.api.patch("/api/apps/reg", json={"title": "two", "options": {"x": 1}})
        await h.api.post("/api/apps/reg/stop")
        await h.api.delete("/api/apps/reg", params={"drop_database": "true"})
        await wait_for(lambda: _true(len(recorder.registry) == 4))
    assert recorder.registry == [
        ("registered", "reg", None, None),
        ("updated", "reg", None, ["options", "title"]),
        ("updated", "reg", None, ["desired_state"]),
        ("unregistered", "reg", None, True),
    ]


class Slow:
    def __init__(self, name: str, log: list[str]) -> None:
        self.__name__ = name
        self.log = log

    @hookimpl
    async def after_app_start(self, app: AppContext) -> None:
        self.log.append(f"{self.__name__} begins")
        await asyncio.sleep(0.02)
        self.log.append(f"{self.__name__} ends")


async def test_async_notifications_are_awaited_one_after_another(tmp_path: Path) -> None:
    log: list[str] = []
    plugins = [Slow("first", log), Slow("second", log)]
    async with running_host(inproc_settings(tmp_path), plugins) as h:
        await h.api.post("/api/apps", json={"name": "order"})
        await h.api.post("/api/apps/order/start")
        # awaited before the start answered, in pluggy's order (last registered first)
        assert log == ["second begins", "second ends", "first begins", "first ends"]


# --- middleware and provisioners ---------------------------------------------------------


def _header_wrapper(value: bytes) -> Any:
    def wrap(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            async def tagged(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"x-wrapped", value)]
                await send(message)

            await app(scope, receive, tagged)

        return wrapped

    return wrap


class Outer:
    @hookimpl(tryfirst=True)
    def tenant_asgi_wrapper(self, app: AppContext) -> Any:
        return _header_wrapper(b"outer")


class Inner:
    @hookimpl
    def tenant_asgi_wrapper(self, app: AppContext) -> Any:
        return _header_wrapper(b"inner") if app.name != "plain" else None


async def test_tenant_middleware_wraps_requests_outermost_first(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path), [Outer(), Inner()]) as h:
        for name in ("wrapped", "plain"):
            await h.api.post("/api/apps", json={"name": name})
        r = await h.api.get("/apps/wrapped/api/info")
        assert r.status_code == 200 and r.json()["app"] == "wrapped"
        # the inner wrapper adds its header first, the outer one last
        assert r.headers.get_list("x-wrapped") == ["inner", "outer"]
        r = await h.api.get("/apps/plain/api/info")
        assert r.headers.get_list("x-wrapped") == ["outer"]
        # the app's own lifespan still ran (its database is open): records work
        r = await h.api.post("/apps/wrapped/api/records", json={"title": "t"})
        assert r.status_code == 201


class ElsewhereProvisioner(SqliteProvisioner):
    """SQLite files in another directory: a provisioner a plugin adds."""

    name = "elsewhere"

    @property
    def files(self) -> Path:
        return self.settings.storage_dir / "elsewhere"


class ProvidesElsewhere:
    @hookimpl
    def register_database_provisioners(self, settings: Any) -> list[Any]:
        return [ElsewhereProvisioner(settings)]


async def test_a_plugin_provisioner_makes_and_drops_tenant_databases(tmp_path: Path) -> None:
    async with running_host(inproc_settings(tmp_path), [ProvidesElsewhere()]) as h:
        r = await h.api.post(
            "/api/apps", json={"name": "far", "options": {"dbProvisioner": "elsewhere"}}
        )
        assert r.status_code == 201, r.text
        assert r.json()["database"] == {
            "connType": "new_database",
            "name": "nocosup_app_far",
            "schema": None,
            "provisioner": "elsewhere",
        }
        path = h.host.settings.storage_dir / "elsewhere" / "nocosup_app_far.sqlite"
        assert path.exists()
        assert not (h.host.settings.storage_dir / "databases" / "nocosup_app_far.sqlite").exists()
        r = await h.api.post("/apps/far/api/records", json={"title": "kept far away"})
        assert r.status_code == 201
        r = await h.api.patch("/api/apps/far", json={"options": {"dbProvisioner": "sqlite"}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "options.dbProvisioner"
        r = await h.api.delete("/api/apps/far", params={"drop_database": "true"})
        assert r.status_code == 200
        assert not path.exists()
        r = await h.api.post(
            "/api/apps", json={"name": "nowhere", "options": {"dbProvisioner": "mysql"}}
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "options.dbProvisioner"
        assert "elsewhere, postgres, sqlite" in r.json()["error"]["message"]


class ReplacesSqlite(ElsewhereProvisioner):
    name = "sqlite"


class ProvidesReplacement:
    @hookimpl
    def register_database_provisioners(self, settings: Any) -> list[Any]:
        return [ReplacesSqlite(settings)]


def test_a_plugin_provisioner_replaces_a_builtin_of_its_name(tmp_path: Path) -> None:
    host = create_host(inproc_settings(tmp_path), [ProvidesReplacement()])
    spec = TenantDatabase("new_database", "x", None, "sqlite")
    assert isinstance(host.databases.provisioner(spec), ReplacesSqlite)
