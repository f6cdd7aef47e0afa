"""The app factory the test servers use (NOCOSUP_APP_FACTORY=tests.factories:build).

It builds the starter app and, steered by the app's ``options.test``, misbehaves on
purpose: ``{"crash": "factory"}`` raises in the factory, ``{"crash": "lifespan"}`` in the
lifespan, ``{"bootDelay": s}`` makes boots slow. Every build appends a line to
``<storage>/apps/<name>/builds.txt`` so tests can count boots, and every slow boot a line
``<environment> <pid> <began> <ended>`` to ``boots.txt`` so tests can see boots overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from nocosup.appctx import AppContext
from nocosup_starter.app import build_app


def build(ctx: AppContext) -> Any:
    with (ctx.storage_dir / "builds.txt").open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    test = ctx.options.get("test") or {}
    if test.get("crash") == "factory":
        raise RuntimeError("factory exploded on purpose")
    inner = build_app(ctx)
    delay = float(test.get("bootDelay", 0))
    crash_lifespan = test.get("crash") == "lifespan"
    if not delay and not crash_lifespan:
        return inner

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        began = time.time()
        await asyncio.sleep(delay)
        with (ctx.storage_dir / "boots.txt").open("a") as fh:
            fh.write(f"{ctx.environment} {os.getpid()} {began:.6f} {time.time():.6f}\n")
        if crash_lifespan:
            raise RuntimeError("lifespan exploded on purpose")
        async with inner.router.lifespan_context(inner):
            yield

    return Starlette(routes=[Mount("/", inner)], lifespan=lifespan)
