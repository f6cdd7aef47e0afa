"""Hook specifications: every extension point of nocosup, one function each.

pluggy calls hooks synchronously. An implementation may return a plain value or an
awaitable (write it as ``async def``); nocosup awaits what needs awaiting, one
implementation after another in plugin order. Three kinds of hook:

- **Notifications** (:data:`NOTIFICATIONS`): something happened. Every implementation is
  called; one that raises is logged with its plugin's name and traceback and the others
  still run. Nothing nocosup itself does depends on them.
- **First-result hooks** (``firstresult=True``): the first implementation returning
  something other than ``None`` wins. They must be plain ``def`` (a coroutine is a result
  even when it would return ``None``): an ``async def`` one is refused when it loads.
- **Collecting hooks** (``register_*``, ``startup``, ``before_app_start``,
  ``tenant_asgi_wrapper``): every implementation runs and a failure is the caller's
  failure (the host does not start, the app goes to ``error``).

Every hook about one app receives it as ``app``, an :class:`~nocosup.appctx.AppContext`;
statuses are :class:`~nocosup.status.AppStatus` members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp, Scope

    from nocosup.appcommands import AppCommand
    from nocosup.appctx import AppContext
    from nocosup.config import Settings
    from nocosup.host import Host
    from nocosup.provisioning import Provisioner
    from nocosup.role import Role
    from nocosup.status import AppStatus

hookspec = pluggy.HookspecMarker("nocosup")
hookimpl = pluggy.HookimplMarker("nocosup")

#: Hooks that report what happened: every implementation runs, failures are contained.
NOTIFICATIONS = frozenset(
    {
        "shutdown",
        "app_created",
        "after_app_start",
        "before_app_stop",
        "after_app_stop",
        "app_removed",
        "app_status_changed",
        "app_registered",
        "app_updated",
        "app_unregistered",
        "environment_status_changed",
    }
)


# --- host ----------------------------------------------------------------------------


@hookspec
def register_roles() -> list[type[Role]] | None:
    """:class:`~nocosup.role.Role` subclasses this plugin provides, each for the
    ``APP_MODE`` in its ``name``. Exactly one loaded plugin may provide each mode."""


@hookspec
def register_routes(host: Host) -> list[BaseRoute] | None:
    """Starlette routes this plugin adds to the host; called once when the host is built,
    after its role was chosen (``host.role``)."""


@hookspec
def register_database_provisioners(settings: Settings) -> list[Provisioner] | None:
    """Tenant-database provisioners this plugin provides. The first provisioner of a
    given ``name`` wins, so a plugin can replace a built-in one (``sqlite``, ``postgres``)."""


@hookspec
def startup(host: Host) -> Any:
    """Fires once when the host starts, after its role started; raising fails start-up."""


@hookspec
def shutdown(host: Host) -> Any:
    """Fires once when the host stops, before its role stops (notification)."""


# --- app lifecycle (where the app runs) ----------------------------------------------


@hookspec(firstresult=True)
def app_factory(app: AppContext) -> Any:
    """Build the ASGI app of tenant ``app`` (or an awaitable of it); first result wins.
    Not called for an app with a template (``nocosup.templates``): the template builds it."""


@hookspec
def register_app_commands(app: AppContext) -> list[AppCommand] | None:
    """Maintenance commands this plugin offers for ``app`` (``environment`` is where it
    would run, or ``None`` on a supervisor listing them), as
    :class:`~nocosup.appcommands.AppCommand` objects. The first command of a given name
    wins. A template's package offers its apps' commands this way."""


@hookspec
def tenant_asgi_wrapper(app: AppContext) -> Callable[[ASGIApp], ASGIApp] | None:
    """A function wrapping the tenant's ASGI app in middleware, or ``None``.

    Called at each boot, after ``app_factory``; the wrappers apply in plugin order, the
    first plugin's outermost. Every request of the app (HTTP and WebSocket) goes through
    them, where the app runs (on the worker in multi-environment mode).
    """


@hookspec
def app_created(app: AppContext) -> Any:
    """Fires after an app's database was provisioned where it runs (notification)."""


@hookspec
def before_app_start(app: AppContext) -> Any:
    """Fires before a tenant app's lifespan starts; raising puts the app in ``error``."""


@hookspec
def after_app_start(app: AppContext) -> Any:
    """Fires once a tenant app is ``running`` (notification)."""


@hookspec
def before_app_stop(app: AppContext) -> Any:
    """Fires before a running tenant app is drained and shut down (notification)."""


@hookspec
def after_app_stop(app: AppContext) -> Any:
    """Fires once a tenant app is ``stopped`` (notification)."""


@hookspec
def app_removed(app: AppContext, database_dropped: bool) -> Any:
    """Fires after an app was removed from the environment it ran in (notification)."""


@hookspec
def app_status_changed(app: AppContext, status: AppStatus, error: str | None) -> Any:
    """Fires on every status change of ``app`` in ``app.environment`` (notification).

    In shared-memory mode it fires where the app runs; in multi-environment mode on the
    worker that ran it and again on the supervisor that received the worker's report.
    Calls are delivered in order, after the change, from a background task: an
    implementation never delays the transition it reports.
    """


# --- registry (supervisor) -----------------------------------------------------------


@hookspec
def app_registered(app: AppContext) -> Any:
    """Fires on the supervisor once a new app is in the registry and provisioned
    (notification; ``app.environment`` is ``None``)."""


@hookspec
def app_updated(app: AppContext, changed: list[str]) -> Any:
    """Fires on the supervisor after a registry change of ``app``: ``changed`` names the
    fields (``title``, ``options``, ``desired_state``, ``environments`` for a move)
    (notification)."""


@hookspec
def app_unregistered(app: AppContext, database_dropped: bool) -> Any:
    """Fires on the supervisor once an app left the registry (notification)."""


# --- environments --------------------------------------------------------------------


@hookspec
def environment_status_changed(environment: dict[str, Any], host: Host) -> Any:
    """Fires when the supervisor sees an environment come online or go offline
    (notification; delivered in order from a background task)."""


# --- proxy ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def select_environment(
    app: AppContext, environments: list[dict[str, Any]], scope: Scope
) -> str | None:
    """Name of the environment a proxied request goes to; first result wins.

    ``environments`` lists the app's online environments in the app's order
    (``app.environment`` is ``None``). Called only when the caller did not pick one with
    ``X-Nocosup-Environment`` or ``__env``, and only when more than one is online.
    """
