"""The plugin manager: built-in role plugins, entry-point plugins, and a typed facade.

Built-in behaviour ships as ordinary plugins listed per role in :data:`ROLE_PLUGINS`;
``APP_MODE`` picks the tuple. Third-party plugins come from the entry-point group
``nocosup``; ``NOCOSUP_LOAD_PLUGINS`` restricts which of them load.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from nocosup import hookspecs
from nocosup.errors import ConfigError

if TYPE_CHECKING:
    from nocosup.config import Settings

log = logging.getLogger("nocosup.plugins")
T = TypeVar("T")

#: Plugins every process of a role loads, in order; the first is the role itself.
ROLE_PLUGINS: dict[str, tuple[str, ...]] = {
    "supervisor": ("plugins.supervisor", "plugins.starter", "plugins.webui"),
    "worker": ("plugins.worker", "plugins.starter"),
}
ENTRY_POINT_GROUP = "nocosup"


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Resolve a hook result that may be a plain value or an awaitable.

    Callables are returned as they are: an ASGI app is a callable result.
    """
    if inspect.isawaitable(value):
        return await value
    return value


async def await_all(results: list[Any]) -> list[Any]:
    """Await each result of a collecting hook in order (pluggy returns them unawaited)."""
    return [await await_me_maybe(r) for r in results]


class Hooks:
    """Typed facade over ``pm.hook``: callers get signatures and awaited results."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook

    def routes(self, host: Any) -> list[Any]:
        return [r for routes in self._hook.register_routes(host=host) if routes for r in routes]

    async def startup(self, host: Any) -> None:
        await await_all(self._hook.startup(host=host))

    async def shutdown(self, host: Any) -> None:
        await await_all(self._hook.shutdown(host=host))

    def app_gateway(self, host: Any) -> Any:
        return self._hook.app_gateway(host=host)

    async def app_factory(self, app: Any) -> Any:
        return await await_me_maybe(self._hook.app_factory(app=app))

    async def app_created(self, app: Any) -> None:
        await await_all(self._hook.app_created(app=app))

    async def before_app_start(self, app: Any) -> None:
        await await_all(self._hook.before_app_start(app=app))

    async def after_app_start(self, app: Any) -> None:
        await await_all(self._hook.after_app_start(app=app))

    async def before_app_stop(self, app: Any) -> None:
        await await_all(self._hook.before_app_stop(app=app))

    async def after_app_stop(self, app: Any) -> None:
        await await_all(self._hook.after_app_stop(app=app))

    async def app_removed(
        self, name: str, environment: str, database_dropped: bool, host: Any
    ) -> None:
        await await_all(
            self._hook.app_removed(
                name=name, environment=environment, database_dropped=database_dropped, host=host
            )
        )

    def app_status_changed(
        self, name: str, environment: str, status: str, error: str | None, host: Any
    ) -> None:
        """Notify plugins; a failing listener is logged, never allowed to break a transition."""
        try:
            self._hook.app_status_changed(
                name=name, environment=environment, status=status, error=error, host=host
            )
        except Exception:
            log.exception("an app_status_changed hook failed")

    def environment_status_changed(self, environment: dict[str, Any], host: Any) -> None:
        try:
            self._hook.environment_status_changed(environment=environment, host=host)
        except Exception:
            log.exception("an environment_status_changed hook failed")

    @property
    def has_select_environment(self) -> bool:
        return bool(self._hook.select_environment.get_hookimpls())

    def select_environment(
        self, app: dict[str, Any], environments: list[dict[str, Any]], scope: Any
    ) -> str | None:
        return self._hook.select_environment(app=app, environments=environments, scope=scope)


def make_plugin_manager(settings: Settings) -> pluggy.PluginManager:
    """Create the manager for ``settings.mode``: role plugins, the user's factory, entry points."""
    pm = pluggy.PluginManager("nocosup")
    pm.add_hookspecs(hookspecs)
    for dotted in ROLE_PLUGINS[settings.mode]:
        pm.register(importlib.import_module(dotted), name=dotted)
    if settings.app_factory:
        pm.register(_FactoryPlugin(load_callable(settings.app_factory)), name="app_factory")
    try:
        _load_entry_points(pm, settings.load_plugins)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        # a misspelt hook or argument in a plugin: say which, no traceback
        raise ConfigError(f"plugin {exc.plugin!r} is invalid: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(
            f"a plugin of the {ENTRY_POINT_GROUP!r} entry-point group cannot be imported: {exc}"
        ) from exc
    if settings.trace_hooks:
        pm.add_hookcall_monitoring(_trace_before, _trace_after)
    return pm


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``module:attr.attr`` and return it, or raise ConfigError saying what is wrong."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"NOCOSUP_APP_FACTORY: cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"NOCOSUP_APP_FACTORY: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise ConfigError(f"NOCOSUP_APP_FACTORY: {spec!r} is not callable")
    return obj


class _FactoryPlugin:
    """Wraps the callable named by NOCOSUP_APP_FACTORY as an ``app_factory`` hook."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory

    @hookspecs.hookimpl(tryfirst=True)
    def app_factory(self, app: Any) -> Any:
        return self.factory(app)


def _load_entry_points(pm: pluggy.PluginManager, only: tuple[str, ...] | None) -> None:
    if only is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    for name in only:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        if pm.get_plugin(name) is None:
            raise ConfigError(
                f"NOCOSUP_LOAD_PLUGINS: no plugin named {name!r} in the "
                f"{ENTRY_POINT_GROUP!r} entry-point group"
            )


def _trace_before(hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
    log.info(
        "hook %s(%s) -> %s", hook_name, ", ".join(kwargs), [impl.plugin_name for impl in hook_impls]
    )


def _trace_after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
    try:
        result = outcome.get_result()
    except BaseException as exc:  # the tracer reports, the caller handles
        log.info("hook %s raised %r", hook_name, exc)
    else:
        log.info("hook %s returned %r", hook_name, result)


def plugin_list(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name and hooks of every registered plugin (served by the admin API)."""
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "hooks": hooks})
    return out
