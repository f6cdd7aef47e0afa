"""What plugins and factories receive about one app: who it is, where it runs, its data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databases import Database

from nocosup.provisioning import TenantDatabase

if TYPE_CHECKING:
    from nocosup.host import Host
    from nocosup.registry import AppRecord


@dataclass(frozen=True)
class AppContext:
    """One tenant app as seen by every hook that is about an app.

    ``environment`` is the environment the hook is about: where the app runs for the
    lifecycle hooks, the reporting environment for ``app_status_changed`` on a
    supervisor, and ``None`` for registry events and ``select_environment``, which are
    about the app as a whole.
    """

    record: AppRecord
    environment: str | None
    instance: str
    host: Host

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def title(self) -> str:
        return self.record.title

    @property
    def options(self) -> dict[str, Any]:
        return self.record.options

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def database_spec(self) -> TenantDatabase:
        return TenantDatabase.from_json(self.record.database)

    @property
    def storage_dir(self) -> Path:
        """A directory of the app's own for files (made on first use)."""
        path = self.host.settings.storage_dir / "apps" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def open_database(self, max_size: int = 5) -> Database:
        """The app's own database, not yet connected: connect it in the app's lifespan."""
        return self.host.databases.open(self.database_spec, max_size=max_size)
