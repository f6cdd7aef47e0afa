"""The in-process test layer: a host built by ``create_host()`` and driven through httpx's
``ASGITransport``, no server process. Most behaviour of the host, the runtime and the
supervisor is checked here; tests against real processes keep what needs them (signals,
replicas, Redis restarts, the proxy on the wire)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from nocosup.config import Settings
from nocosup.host import Host, create_host
from tests.servers import ADMIN_TOKEN, AUTH

BASE_URL = "http://nocosup.test"


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
    """A started in-process host, with the same client helpers as a served one."""

    host: Host
    #: A client that sends the admin token, open while the host runs.
    api: httpx.AsyncClient

    @property
    def storage(self) -> Path:
        return self.host.settings.storage_dir

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new client of the host (no token), to use in ``async with``."""
        transport = httpx.ASGITransport(app=self.host)
        return httpx.AsyncClient(transport=transport, base_url=BASE_URL, **kwargs)

    def admin(self) -> httpx.AsyncClient:
        return self.client(headers=AUTH)


@contextlib.asynccontextmanager
async def running_host(
    settings: Settings, plugins: Sequence[object] = ()
) -> AsyncIterator[InProc]:
    """A started host and an admin client talking to it in process; stopped on exit."""
    host = create_host(settings, plugins)
    await host.start()
    try:
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=AUTH) as api:
            yield InProc(host, api)
    finally:
        await host.stop()
