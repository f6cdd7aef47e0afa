"""The in-process test layer: a host built by ``create_host()`` and driven through httpx's
``ASGITransport``, no server process. Most behaviour of the host, the runtime and the
supervisor is checked here; tests against real processes keep what needs them (signals,
replicas, Redis restarts, the proxy on the wire)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from nocosup.config import Settings
from nocosup.host import Host, create_host
from tests.servers import ADMIN_TOKEN, AUTH


def inproc_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings of an embedded-defaults host (SQLite under ``tmp_path``), ``env`` on top."""
    return Settings.from_env(
        {
            "NOCOSUP_STORAGE_DIR": str(tmp_path / "storage"),
            "NOCOSUP_ADMIN_TOKEN": ADMIN_TOKEN,
            "NOCOSUP_APP_FACTORY": "tests.factories:build",
            "NOCOSUP_LOAD_PLUGINS": "",
            **env,
        }
    )


@dataclass
class InProc:
    host: Host
    #: Sends the admin token on every request.
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def running_host(settings: Settings, plugins: Sequence[object] = ()) -> AsyncIterator[InProc]:
    """A started host and a client talking to it in process; stopped on exit."""
    host = create_host(settings, plugins)
    await host.start()
    try:
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://nocosup.test", headers=AUTH
        ) as client:
            yield InProc(host, client)
    finally:
        await host.stop()
