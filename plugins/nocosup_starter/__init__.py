"""The starter app: what every tenant runs unless a plugin or NOCOSUP_APP_FACTORY builds another."""

from __future__ import annotations

from typing import Any

from nocosup.appctx import AppContext
from nocosup.hookspecs import hookimpl
from nocosup_starter.app import build_app


@hookimpl(trylast=True)
def app_factory(app: AppContext) -> Any:
    return build_app(app)
