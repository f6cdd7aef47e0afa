"""The plugin manager: every plugin from the ``nocosup`` entry-point group, a typed facade.

Built-in behaviour ships as ordinary plugins in the same entry-point group as third-party
ones (datasette's pattern): ``nocosup_supervisor`` and ``nocosup_worker`` provide the
roles, ``nocosup_starter`` the default tenant app, ``nocosup_webui`` the web page. Each
can be disabled with ``NOCOSUP_DISABLE_PLUGINS`` and replaced by another plugin;
``NOCOSUP_LOAD_PLUGINS`` restricts which third-party plugins load.

Loading checks the contract, so a broken plugin stops start-up with a message naming it
(``nocosup serve`` exits 2) instead of failing later: unknown hooks and arguments, a
first-result hook written ``async def``, a wrapper on a notification hook. At run time a
notification hook calls every implementation and contains each one's failure
(:meth:`Hooks.notify`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy
from pluggy import HookImpl
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from nocosup import hookspecs
from nocosup.errors import ConfigError
from nocosup.hookspecs import NOTIFICATIONS, hookimpl
from nocosup.provisioning import BUILTIN_PROVISIONERS, Provisioner

if TYPE_CHECKING:
    from starlette.types import Scope

    from nocosup.appcommands import AppCommand
    from nocosup.appctx import AppContext
    from nocosup.config import Settings
    from nocosup.host import Host
    from nocosup.role import Role

log = logging.getLogger("nocosup.plugins")
T = TypeVar("T")

ENTRY_POINT_GROUP = "nocosup"
#: The distribution whose entry points are the built-in plugins.
DISTRIBUTION = "nocosup"
#: Plugin name of the core hooks (the built-in database provisioners); always loaded.
CORE = "nocosup.core"
#: Plugin name of the factory named by NOCOSUP_APP_FACTORY.
APP_FACTORY = "app_factory"


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Resolve a hook result that may be a plain value or an awaitable.

    Callables are returned as they are: an ASGI app is a callable result.
    """
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from (shown by ``GET /api/plugins``)."""

    name: str
    source: str
    builtin: bool
    version: str | None = None


class Hooks:
    """Typed facade over the plugin manager: callers get signatures and awaited results."""

    def __init__(self, pm: pluggy.PluginManager, info: dict[str, PluginInfo], trace: bool):
        self.pm = pm
        self.info = info
        self.trace = trace
        self._hook = pm.hook

    # --- host ----------------------------------------------------------------------

    def roles(self) -> dict[str, type[Role]]:
        """Every provided role by mode; two plugins providing one mode is a ConfigError."""
        found: dict[str, tuple[type[Role], str]] = {}
        for impl in self._impls("register_roles"):
            # pluggy types an implementation's result as object; the hookspec says what it is
            for role in cast("list[type[Role]] | None", impl.function()) or ():
                other = found.get(role.name)
                if other is not None:
                    raise ConfigError(
                        f"plugins {other[1]!r} and {impl.plugin_name!r} both provide the "
                        f"{role.name!r} role; disable one with NOCOSUP_DISABLE_PLUGINS"
                    )
                found[role.name] = (role, impl.plugin_name)
        return {mode: role for mode, (role, _) in found.items()}

    def routes(self, host: Host) -> list[BaseRoute]:
        return [r for routes in self._hook.register_routes(host=host) if routes for r in routes]

    def provisioners(self, settings: Settings) -> list[Provisioner]:
        return [
            p
            for found in self._hook.register_database_provisioners(settings=settings) or ()
            if found
            for p in found
        ]

    async def startup(self, host: Host) -> None:
        """Every ``startup`` in plugin order; the first failure fails start-up."""
        for result in self._hook.startup(host=host):
            await await_me_maybe(result)

    # --- apps ------------------------------------------------------------------------

    async def app_factory(self, app: AppContext) -> Any:
        return await await_me_maybe(self._hook.app_factory(app=app))

    def default_factory(self) -> str | None:
        """Who builds an app without a template: the first ``app_factory``
        implementation pluggy calls, by plugin name (None: no plugin builds apps)."""
        impls = self._impls("app_factory")
        return impls[0].plugin_name if impls else None

    def app_commands(self, app: AppContext) -> dict[str, AppCommand]:
        """The maintenance commands plugins offer for ``app``, by name (the first plugin
        offering a name wins)."""
        found: dict[str, AppCommand] = {}
        for offered in self._hook.register_app_commands(app=app):
            for command in offered or ():
                found.setdefault(command.name, command)
        return found

    def tenant_wrappers(self, app: AppContext) -> list[Callable[[ASGIApp], ASGIApp]]:
        """The middleware wrappers for ``app``, the first plugin's first (outermost)."""
        return [w for w in self._hook.tenant_asgi_wrapper(app=app) if w is not None]

    async def before_app_start(self, app: AppContext) -> None:
        for result in self._hook.before_app_start(app=app):
            await await_me_maybe(result)

    def has_select_environment(self) -> bool:
        return bool(self._hook.select_environment.get_hookimpls())

    def select_environment(
        self, app: AppContext, environments: list[dict[str, Any]], scope: Scope
    ) -> str | None:
        picked = self._hook.select_environment(app=app, environments=environments, scope=scope)
        return picked if isinstance(picked, str) else None

    # --- notifications -----------------------------------------------------------------

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of notification ``hook`` in plugin order, awaiting
        each; one that raises is logged with its plugin's name and the rest still run."""
        assert hook in NOTIFICATIONS, hook
        for impl in self._impls(hook):
            try:
                result = impl.function(*(kwargs[name] for name in impl.argnames))
                if self.trace:
                    log.info("hook %s -> %s", hook, impl.plugin_name)
                await await_me_maybe(result)
            except Exception:
                log.exception("plugin %r failed in hook %s; carrying on", impl.plugin_name, hook)

    def implemented(self) -> frozenset[str]:
        """Names of the hooks at least one plugin implements (plugins load once)."""
        return frozenset(
            name
            for name, caller in vars(self._hook).items()
            if isinstance(caller, pluggy.HookCaller) and caller.get_hookimpls()
        )

    def _impls(self, hook: str) -> list[HookImpl]:
        """Implementations in the order pluggy calls them (tryfirst first, then newest)."""
        caller: pluggy.HookCaller = getattr(self._hook, hook)
        return list(reversed(caller.get_hookimpls()))

    # --- introspection -------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Name, origin and hooks of every registered plugin, in registration order."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            info = self.info.get(name) or PluginInfo(name, "registered in code", False)
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append(
                {
                    "name": name,
                    "source": info.source,
                    "builtin": info.builtin,
                    "version": info.version,
                    "hooks": hooks,
                }
            )
        return out


class _Core:
    """nocosup's own hook implementations: the built-in tenant-database provisioners."""

    @hookimpl(trylast=True)
    def register_database_provisioners(self, settings: Settings) -> list[Provisioner]:
        return [kind(settings) for kind in BUILTIN_PROVISIONERS]


class _FactoryPlugin:
    """Wraps the callable named by NOCOSUP_APP_FACTORY as an ``app_factory`` hook."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory

    @hookimpl(tryfirst=True)
    def app_factory(self, app: AppContext) -> Any:
        return self.factory(app)


def load_plugins(settings: Settings, extra: Sequence[object] = ()) -> Hooks:
    """Register the core, the user's factory, the entry-point plugins and ``extra``
    (plugin objects registered in code), then check every implementation against the
    hook contract (ConfigError naming the plugin)."""
    pm = pluggy.PluginManager("nocosup")
    pm.add_hookspecs(hookspecs)
    info: dict[str, PluginInfo] = {CORE: PluginInfo(CORE, "nocosup core", True)}
    pm.register(_Core(), name=CORE)
    if settings.app_factory:
        factory = load_callable(settings.app_factory)
        pm.register(_FactoryPlugin(factory), name=APP_FACTORY)
        info[APP_FACTORY] = PluginInfo(APP_FACTORY, settings.app_factory, False)
    for ep in _selected_entry_points(settings):
        builtin = _is_builtin(ep)
        try:
            plugin = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"plugin {ep.name!r} of the {ENTRY_POINT_GROUP!r} entry-point group cannot be "
                f"imported ({ep.value}): {type(exc).__name__}: {exc}"
            ) from exc
        _register(pm, plugin, ep.name)
        version = ep.dist.version if ep.dist is not None else None
        source = f"entry point {ep.value}" + (f" ({ep.dist.name})" if ep.dist else "")
        info[ep.name] = PluginInfo(ep.name, source, builtin, version)
    for plugin in extra:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        _register(pm, plugin, name)
        info[name] = PluginInfo(name, "registered in code", False)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise ConfigError(f"plugin {name!r} is invalid: {exc}") from exc
    _check_contract(pm)
    if settings.trace_hooks:
        pm.add_hookcall_monitoring(_trace_before, _trace_after)
    return Hooks(pm, info, settings.trace_hooks)


def _selected_entry_points(settings: Settings) -> list[EntryPoint]:
    """Built-ins unless disabled; third-party ones as NOCOSUP_LOAD_PLUGINS allows."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    disabled = set(settings.disable_plugins)
    only = settings.load_plugins
    third_party = {name for name, ep in found.items() if not _is_builtin(ep)}
    for name in only or ():
        if name not in third_party:
            raise ConfigError(
                f"NOCOSUP_LOAD_PLUGINS: no plugin named {name!r} in the {ENTRY_POINT_GROUP!r} "
                f"entry-point group (installed: {', '.join(sorted(third_party)) or 'none'})"
            )
    for name in disabled:
        if name not in found:
            raise ConfigError(
                f"NOCOSUP_DISABLE_PLUGINS: no plugin named {name!r} in the "
                f"{ENTRY_POINT_GROUP!r} entry-point group (installed: "
                f"{', '.join(sorted(found)) or 'none'})"
            )
    selected = []
    for name, ep in sorted(found.items(), key=lambda item: (not _is_builtin(item[1]), item[0])):
        if name in disabled:
            log.info("plugin %s disabled by NOCOSUP_DISABLE_PLUGINS", name)
            continue
        if name in third_party and only is not None and name not in only:
            continue
        selected.append(ep)
    return selected


def _is_builtin(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name.lower() == DISTRIBUTION


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"plugin {name!r} is invalid: {exc}") from exc
    except ValueError as exc:  # the same name or object registered twice
        raise ConfigError(f"plugin {name!r} cannot be registered: {exc}") from exc


def _check_contract(pm: pluggy.PluginManager) -> None:
    """Refuse what pluggy accepts but nocosup cannot call correctly."""
    for caller in vars(pm.hook).values():
        if not isinstance(caller, pluggy.HookCaller) or caller.spec is None:
            continue
        firstresult = caller.spec.opts.get("firstresult", False)
        for impl in caller.get_hookimpls():
            function = impl.function
            if firstresult and (
                inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
            ):
                raise ConfigError(
                    f"plugin {impl.plugin_name!r}: hook {caller.name} is a first-result hook "
                    "and cannot be 'async def' (its coroutine would count as a result even when "
                    "it returns None); write a plain def that returns an awaitable or None"
                )
            if caller.name in NOTIFICATIONS and (impl.hookwrapper or impl.wrapper):
                raise ConfigError(
                    f"plugin {impl.plugin_name!r}: hook {caller.name} is a notification; "
                    "wrappers are not supported on it"
                )


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
    return obj  # type: ignore[no-any-return]


def _trace_before(
    hook_name: str, hook_impls: Sequence[HookImpl], kwargs: Mapping[str, Any]
) -> None:
    log.info(
        "hook %s(%s) -> %s", hook_name, ", ".join(kwargs), [impl.plugin_name for impl in hook_impls]
    )


def _trace_after(
    outcome: pluggy.Result[Any],
    hook_name: str,
    hook_impls: Sequence[HookImpl],
    kwargs: Mapping[str, Any],
) -> None:
    try:
        result = outcome.get_result()
    except BaseException as exc:  # the tracer reports, the caller handles
        log.info("hook %s raised %r", hook_name, exc)
    else:
        log.info("hook %s returned %r", hook_name, result)
