"""Maintenance commands: work an app's template or a plugin knows how to do to one app
(run its schema migrations, rebuild an index, import data), run where the app runs.

A plugin offers them with the ``register_app_commands`` hook: given an app, it returns
the :class:`AppCommand` objects that apply to it. ``POST /api/apps/{name}/commands`` runs
one in every environment of the app, one after another (as a start does). While it runs
the app's status is ``commanding`` with a message the command may update
(:meth:`CommandRun.progress`), and tenant requests answer ``503 APP_COMMANDING`` with
that message; afterwards the app has its previous status again, or ``error`` with the
command's failure.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nocosup.errors import InvalidInput

if TYPE_CHECKING:
    from nocosup.appctx import AppContext

#: What a command name may look like (checked with fullmatch).
NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
#: Longest progress message kept (a command may report anything).
MAX_MESSAGE = 500


class CommandRun:
    """What a running command gets: the app, and a way to say how far it is."""

    def __init__(self, app: AppContext, report: Callable[[str], None]) -> None:
        self.app = app
        self._report = report

    def progress(self, message: str) -> None:
        """Show ``message`` as the app's status message (requests get it in their 503)."""
        self._report(message[:MAX_MESSAGE])


@dataclass(frozen=True)
class AppCommand:
    """One command: ``run(command_run, args)`` does the work; raising fails it (the app
    then shows ``error`` with the exception's text)."""

    name: str
    description: str
    run: Callable[[CommandRun, dict[str, Any]], Awaitable[None]]


def check_request(
    data: dict[str, Any], available: dict[str, AppCommand]
) -> tuple[str, dict[str, Any]]:
    """(command, args) of a ``POST /api/apps/{name}/commands`` body, checked against what
    the app offers; InvalidInput naming the field otherwise."""
    unknown = sorted(set(data) - {"command", "args"})
    if unknown:
        raise InvalidInput(
            f"unknown field {unknown[0]!r}; allowed: command, args", field=unknown[0]
        )
    command = data.get("command")
    names = ", ".join(sorted(available)) or "none"
    if not isinstance(command, str) or not NAME.fullmatch(command):
        raise InvalidInput(
            f"command must be the name of one of the app's commands ({names})", field="command"
        )
    if command not in available:
        raise InvalidInput(f"the app has no command {command!r}; it has: {names}", field="command")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise InvalidInput("args must be a JSON object", field="args")
    return command, args


def describe(available: dict[str, AppCommand]) -> list[dict[str, str]]:
    return [
        {"name": c.name, "description": c.description}
        for c in sorted(available.values(), key=lambda c: c.name)
    ]
