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

#: URL scheme -> the same with SQLAlchemy's async driver (AppContext.sqlalchemy_url).
_ASYNC_DRIVERS = (("postgresql://", "postgresql+asyncpg://"), ("sqlite:", "sqlite+aiosqlite:"))


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
    def prefix(self) -> str:
        """The app's URL path prefix as known when it is built: the host's ``root_path``
        (where it is mounted, given to :func:`~nocosup.host.create_host`) plus
        ``/apps/{name}``, no trailing slash. For frameworks that need it at build time
        (datasette's ``base_url``, an OpenAPI ``servers`` entry). Per request,
        ``scope["root_path"]`` is the authority: it also carries a prefix that only the
        request knows (a path-prefixing proxy in front)."""
        return f"{self.host.root_path}/apps/{self.name}"

    @property
    def database_url(self) -> str | None:
        """The app's own database as a driver-less URL: ``postgresql://user@host:port/db``
        (asyncpg takes it as is) or ``sqlite:////abs/path.sqlite``; None for a database
        kind without a URL. A ``new_schema`` app must also set :attr:`database_schema`
        on ``search_path``."""
        return self.host.databases.url(self.database_spec)

    @property
    def sqlalchemy_url(self) -> str | None:
        """:attr:`database_url` with SQLAlchemy's async driver named
        (``postgresql+asyncpg://``, ``sqlite+aiosqlite:///``), for ``create_async_engine``."""
        url = self.database_url
        if url is None:
            return None
        for plain, driver in _ASYNC_DRIVERS:
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @property
    def sqlite_path(self) -> Path | None:
        """The app's SQLite file (for aiosqlite, ``sqlite3``, datasette), else None."""
        return self.host.databases.sqlite_path(self.database_spec)

    @property
    def database_schema(self) -> str | None:
        """The PostgreSQL schema of a ``new_schema`` app, to put on ``search_path``
        (asyncpg: ``server_settings={"search_path": schema}``); None otherwise."""
        return self.database_spec.schema

    @property
    def storage_dir(self) -> Path:
        """A directory of the app's own for files (made on first use)."""
        path = self.host.settings.storage_dir / "apps" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def open_database(self, max_size: int = 5) -> Database:
        """The app's own database, not yet connected: connect it in the app's lifespan."""
        return self.host.databases.open(self.database_spec, max_size=max_size)
