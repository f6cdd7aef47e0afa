"""App templates: installed code that builds an app, chosen by name per app.

A package registers templates in the ``nocosup.templates`` entry-point group, each a name
pointing at a factory with the signature of ``NOCOSUP_APP_FACTORY`` factories (it takes
an :class:`~nocosup.appctx.AppContext` and returns an ASGI app or an awaitable of one).
``POST /api/apps`` names one in ``"template"``; the supervisor checks it is installed
there, every process that runs the app loads it from its own installation (a worker
without it puts the app in ``error`` saying so). An app without a template is built by
the ``app_factory`` hook: ``NOCOSUP_APP_FACTORY`` when set, else a plugin's, else the
starter. Code is never named by a request, only chosen among what is installed.
"""

from __future__ import annotations

import asyncio
import re
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from nocosup.errors import InvalidInput
from nocosup.plugins import await_me_maybe

if TYPE_CHECKING:
    from nocosup.appctx import AppContext

GROUP = "nocosup.templates"
#: What a template name may look like (an entry-point name, checked before any lookup).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TemplateNotInstalled(RuntimeError):
    """An app's template is not installed in the process that should run it."""


def installed() -> dict[str, EntryPoint]:
    """Every template installed in this process, by name (the first of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def check(value: Any) -> str | None:
    """The template an app asks for, checked against what is installed (None: the
    default factory); InvalidInput naming the choices otherwise."""
    if value is None:
        return None
    choices = installed()
    names = ", ".join(sorted(choices)) or "none"
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise InvalidInput(
            f"template must be the name of an installed template ({names})", field="template"
        )
    if value not in choices:
        raise InvalidInput(
            f"template {value!r} is not installed; installed: {names}", field="template"
        )
    return value


def describe() -> list[dict[str, Any]]:
    """Name, distribution, version and description of every installed template."""
    out = []
    for name, ep in sorted(installed().items()):
        dist = ep.dist
        out.append(
            {
                "name": name,
                "distribution": dist.name if dist is not None else None,
                "version": dist.version if dist is not None else None,
                "description": _description(ep),
            }
        )
    return out


def _description(ep: EntryPoint) -> str:
    """The factory's docstring (first line), else the distribution's summary; a factory
    that cannot be imported says why instead."""
    try:
        factory = ep.load()
    except Exception as exc:
        return f"cannot be imported: {type(exc).__name__}: {exc}"
    doc = (getattr(factory, "__doc__", None) or "").strip()
    if doc:
        return doc.splitlines()[0].strip()
    summary = ep.dist.metadata["Summary"] if ep.dist is not None else None
    return summary or ""


async def build(name: str, app: AppContext) -> Any:
    """Build ``app`` with template ``name`` as installed here.

    Finding the entry point (a scan of every installed distribution) and loading it (the
    first import of a FastAPI or datasette app takes up to a second) run in a thread:
    the event loop goes on serving every other app of the process meanwhile, which
    matters most when a sleeping app wakes. The factory itself runs on the loop."""
    found = await asyncio.to_thread(installed)
    ep = found.get(name)
    if ep is None:
        raise TemplateNotInstalled(
            f"template {name!r} is not installed in environment {app.environment!r} "
            f"(installed: {', '.join(sorted(found)) or 'none'})"
        )
    factory = await asyncio.to_thread(ep.load)
    if not callable(factory):
        raise TemplateNotInstalled(f"template {name!r} ({ep.value}) is not callable")
    return await await_me_maybe(factory(app))
