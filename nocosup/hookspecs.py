"""Hook specifications: every extension point of nocosup, one function each.

pluggy calls hooks synchronously. A hook implementation may return a plain value or an
awaitable; nocosup awaits what needs awaiting. Never write a ``firstresult`` hook as
``async def``: the coroutine it returns is a result and stops the chain even when the
coroutine would have returned ``None``. Return ``None`` synchronously to pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from starlette.routing import BaseRoute
    from starlette.types import Scope

    from nocosup.appctx import AppContext
    from nocosup.host import Host

hookspec = pluggy.HookspecMarker("nocosup")
hookimpl = pluggy.HookimplMarker("nocosup")


# --- host ----------------------------------------------------------------------------


@hookspec
def register_routes(host: Host) -> list[BaseRoute] | None:
    """Starlette routes this plugin adds to the host; called once when the host is built."""


@hookspec
def startup(host: Host) -> Any:
    """Fires once when the host starts, in plugin order; may return an awaitable."""


@hookspec
def shutdown(host: Host) -> Any:
    """Fires once when the host stops, before its services close; may return an awaitable."""


@hookspec(firstresult=True)
def app_gateway(host: Host) -> Any:
    """The gateway serving ``/apps/{name}/...`` for this role; stops at the first result.

    Called once after ``startup``. The result needs one method:
    ``async handle(name, scope, receive, send)``.
    """


# --- app lifecycle -------------------------------------------------------------------


@hookspec(firstresult=True)
def app_factory(app: AppContext) -> Any:
    """Build the ASGI app of tenant ``app`` (or an awaitable of it); stops at the first result."""


@hookspec
def app_created(app: AppContext) -> Any:
    """Fires after an app's database was provisioned where it runs; may return an awaitable."""


@hookspec
def before_app_start(app: AppContext) -> Any:
    """Fires before a tenant app's lifespan starts; raising puts the app in ``error``."""


@hookspec
def after_app_start(app: AppContext) -> Any:
    """Fires once a tenant app is ``running``; may return an awaitable."""


@hookspec
def before_app_stop(app: AppContext) -> Any:
    """Fires before a running tenant app's lifespan is shut down; may return an awaitable."""


@hookspec
def after_app_stop(app: AppContext) -> Any:
    """Fires once a tenant app is ``stopped``; may return an awaitable."""


@hookspec
def app_removed(name: str, environment: str, database_dropped: bool, host: Host) -> Any:
    """Fires after an app was removed from an environment; may return an awaitable."""


@hookspec
def app_status_changed(
    name: str, environment: str, status: str, error: str | None, host: Host
) -> None:
    """Fires on every status change of an app in an environment; must not block."""


# --- environments --------------------------------------------------------------------


@hookspec
def environment_status_changed(environment: dict[str, Any], host: Host) -> None:
    """Fires when the supervisor sees an environment come online or go offline."""


# --- proxy ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def select_environment(
    app: dict[str, Any], environments: list[dict[str, Any]], scope: Scope
) -> str | None:
    """Name of the environment a proxied request goes to; stops at the first result.

    ``environments`` lists the app's online environments in the app's order. Called only
    when the caller did not pick one with ``X-Nocosup-Environment`` or ``__env``.
    """
