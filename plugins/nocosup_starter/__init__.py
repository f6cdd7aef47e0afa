"""The starter app: what every tenant runs unless a plugin or NOCOSUP_APP_FACTORY builds another."""

from __future__ import annotations

from typing import Any

from nocosup.appcommands import AppCommand, CommandRun
from nocosup.appctx import AppContext
from nocosup.hookspecs import hookimpl
from nocosup_starter.app import LATEST, build_app, migrate

PLUGIN_NAME = "nocosup_starter"


@hookimpl(trylast=True)
def app_factory(app: AppContext) -> Any:
    return build_app(app)


async def _upgrade(run: CommandRun, args: dict[str, Any]) -> None:
    if args:
        raise ValueError(f"upgrade takes no arguments; got {', '.join(sorted(args))}")
    db = run.app.open_database(max_size=1)
    await db.connect()
    try:
        version = await migrate(db, run.progress)
    finally:
        await db.disconnect()
    run.progress(f"schema at version {version}")


UPGRADE = AppCommand(
    "upgrade", f"Run the starter's schema migrations (to version {LATEST}).", _upgrade
)


@hookimpl
def register_app_commands(app: AppContext) -> list[AppCommand] | None:
    """``upgrade`` for the apps the starter builds: its template, or no template while
    the starter is the default factory."""
    template = app.record.template
    if template == "starter":
        return [UPGRADE]
    if template is None and app.host.hooks.default_factory() == PLUGIN_NAME:
        return [UPGRADE]
    return None
