"""The supervisor's fast path (nocosup.fastpath).

Every test of tests/test_proxy.py runs again here with its proxy servers on the fast
path's protocol (``FAST_PATH``), so streaming, bodies, errors, disconnects and header rules
are checked against it too; the tests below add what only the fast path has.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tests.test_proxy as proxy_tests
from nocosup.config import Settings
from nocosup.fastpath import FastHttpToolsProtocol
from nocosup.server import FAST_PROTOCOL, uvicorn_options
from tests.test_proxy import *  # noqa: F403 - the proxy's tests, collected again here
from tests.test_proxy import ProxyServer


@pytest.fixture(scope="module", autouse=True)
def fast_path() -> Iterator[None]:
    """Before any other fixture of this module: proxy servers take the fast path."""
    proxy_tests.FAST_PATH = True
    try:
        yield
    finally:
        proxy_tests.FAST_PATH = False


async def test_requests_take_the_fast_path(proxied: ProxyServer) -> None:
    routed, express = proxied.fast_routed, FastHttpToolsProtocol.express_answered
    async with proxied.http() as c:
        for _ in range(3):  # the first may open the pooled connection the others reuse
            r = await c.get(proxy_tests.PREFIX + "/echo?x=1")
            assert r.status_code == 200
            assert r.json()["query"] == "x=1"
        # a body goes the task's way, below ASGI all the same
        assert (await c.post(proxy_tests.PREFIX + "/echo", content=b"abc")).status_code == 200
    assert proxied.fast_routed == routed + 4
    assert FastHttpToolsProtocol.express_answered >= express + 2


@pytest.mark.parametrize(
    ("fields", "http", "fast"),
    [
        ({"process_adapter": "remote"}, "httptools", True),
        ({"process_adapter": "remote"}, "auto", True),
        ({"process_adapter": "remote", "proxy_fast_path": False}, "httptools", False),
        ({"process_adapter": "remote"}, "h11", False),
        ({"process_adapter": "local"}, "httptools", False),  # shared memory: no proxy
        ({"mode": "worker", "process_adapter": "local"}, "httptools", False),
    ],
)
def test_only_a_multi_environment_supervisor_gets_the_fast_protocol(
    fields: dict[str, Any], http: str, fast: bool
) -> None:
    protocol = uvicorn_options(Settings(**fields), http)["http"]
    assert (protocol == FAST_PROTOCOL) is fast
