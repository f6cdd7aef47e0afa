"""Environment directories: which runtime environments exist and whether they are online.

``LocalEnvironments`` knows only the host's own environment (shared-memory mode); the
Redis directory reads the workers' heartbeats.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from nocosup import __version__
from nocosup.config import Settings
from nocosup.errors import EnvironmentInUse, EnvironmentNotFound
from nocosup.registry import now_iso


class EnvironmentDirectory(ABC):
    @abstractmethod
    async def list(self) -> list[dict[str, Any]]:
        """Every known environment: name, url, proxy_url, version, status, instances,
        last_heartbeat_at."""

    async def get(self, name: str) -> dict[str, Any]:
        """One environment as :meth:`list` shows it, plus ``dead_letters`` (None where
        there is no command stream); EnvironmentNotFound when unknown."""
        for env in await self.list():
            if env["name"] == name:
                return {**env, "dead_letters": None}
        raise EnvironmentNotFound(f"environment {name!r} is not registered")

    async def remove(self, name: str) -> None:
        """Forget environment ``name`` everywhere it is recorded (the caller checked that
        it may go)."""
        raise EnvironmentInUse(
            f"environment {name!r} is this process (shared-memory mode): it cannot be removed"
        )


class LocalEnvironments(EnvironmentDirectory):
    """The single environment this process is: always online while it runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = now_iso()

    async def list(self) -> list[dict[str, Any]]:
        s = self.settings
        return [
            {
                "name": s.environment_name,
                "url": s.environment_url,
                "proxy_url": s.proxy_url,
                "version": __version__,
                "status": "online",
                "instances": [s.instance_id],
                "last_heartbeat_at": now_iso(),
                "registered_at": self.started_at,
            }
        ]
