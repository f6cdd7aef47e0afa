"""The app factory the test servers use (NOCOSUP_APP_FACTORY=tests.factories:build).

It builds the starter app and, steered by the app's ``options.test``, misbehaves on
purpose: ``{"crash": "factory"}`` raises in the factory, ``{"crash": "lifespan"}`` in the
lifespan (with ``"crashIn": env``, in that environment only), ``{"bootDelay": s}``
makes boots slow, ``{"hold": true}`` adds ``POST /test/hold``, a request the test keeps
in flight as long as it likes (it answers once the client has sent all its body), and
``{"echo": true}`` builds an app that answers every request with what it received (path,
root_path, headers). Every build appends a line to ``<storage>/apps/<name>/builds.txt``
so tests can count boots, and every slow boot a line ``<environment> <pid> <began>
<ended>`` to ``boots.txt`` so tests can see boots overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from nocosup.appctx import AppContext
from nocosup_starter.app import build_app


def build(ctx: AppContext) -> Any:
    with (ctx.storage_dir / "builds.txt").open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    test = ctx.options.get("test") or {}
    if test.get("crash") == "factory":
        raise RuntimeError("factory exploded on purpose")
    if test.get("echo"):
        return echo_app
    inner = build_app(ctx)
    delay = float(test.get("bootDelay", 0))
    crash_lifespan = test.get("crash") == "lifespan" and test.get("crashIn") in (
        None,
        ctx.environment,
    )
    hold = bool(test.get("hold"))
    if not delay and not crash_lifespan and not hold:
        return inner
    lifespan_up = False

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        began = time.time()
        await asyncio.sleep(delay)
        with (ctx.storage_dir / "boots.txt").open("a") as fh:
            fh.write(f"{ctx.environment} {os.getpid()} {began:.6f} {time.time():.6f}\n")
        if crash_lifespan:
            raise RuntimeError("lifespan exploded on purpose")
        nonlocal lifespan_up
        async with inner.router.lifespan_context(inner):
            lifespan_up = True
            try:
                yield
            finally:
                lifespan_up = False

    async def held(request: Request) -> Response:
        """In flight from its first line (it leaves ``held`` in the app's storage dir) until
        the client has sent its whole body; then says what it got and whether the app's
        lifespan was still up when it answered."""
        (ctx.storage_dir / "held").touch()
        body = await request.body()
        return JSONResponse(
            {
                "received": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "lifespan_up": lifespan_up,
            }
        )

    routes: list[Any] = [Route("/test/hold", held, methods=["POST"])] if hold else []
    return Starlette(routes=[*routes, Mount("/", inner)], lifespan=lifespan)


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tenant that shows what it was sent: ``{"path", "root_path", "client", "scheme",
    "headers"}``, every header as a ``[name, value]`` pair of latin-1 strings, in order."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps(
        {
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
            "client": (scope.get("client") or [None])[0],
            "scheme": scope.get("scheme"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-echo", b"1"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
