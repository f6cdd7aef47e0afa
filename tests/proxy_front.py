"""A proxy process for tests: ``uvicorn tests.proxy_front:create_app --factory``.

It forwards everything to ``PROXY_UPSTREAM`` the way the supervisor's gateway does
(``root_path`` = ``/apps/demo``), with the Proxy made and closed in the lifespan, and
answers ``/_pool`` itself with the client's pool figures so a test can check for leaks in
a process it cannot look into. Used to run the proxy on uvloop + httptools, as
``nocosup serve`` does, rather than on the test's own asyncio loop.
"""

from __future__ import annotations

import json
import os
from typing import Any

from nocosup.proxy import Proxy
from nocosup.proxy_client import LeanClient


def create_app() -> Any:
    upstream = os.environ["PROXY_UPSTREAM"]
    max_connections = int(os.environ.get("PROXY_MAX_CONNECTIONS", "100"))
    holder: dict[str, Proxy] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    holder["proxy"] = Proxy(max_connections=max_connections)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await holder["proxy"].aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        proxy = holder["proxy"]
        if scope["path"] == "/_pool":
            assert isinstance(proxy.client, LeanClient)
            body = json.dumps(proxy.client.stats()).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope = dict(scope)
        scope["root_path"] = "/apps/demo"
        await proxy.forward(upstream, scope, receive, send)

    return _Front(app)


class _Front:
    """The app, offered to nocosup.fastpath's protocol too (``fast_route``): every HTTP
    request but ``/_pool`` runs the same code below ASGI."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def fast_route(self, scope: dict[str, Any]) -> Any:
        return None if scope["path"] == "/_pool" else self.app
