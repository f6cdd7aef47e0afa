"""Everything that touches a SQL database goes through here (the ``databases`` package).

Two jobs: open the registry database, and provision, open and drop tenant databases.
A tenant database is a SQLite file, a PostgreSQL database or a PostgreSQL schema,
described by a :class:`TenantDatabase`. Identifiers cannot be bound as parameters, so
every name is checked against a strict pattern before it is quoted into DDL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from databases import Database

from nocosup.config import Settings
from nocosup.errors import DatabaseError, InvalidInput
from nocosup.sqlite import sqlite_database

log = logging.getLogger("nocosup.db")

CONN_TYPES = ("new_database", "new_schema")
_IDENT = re.compile(r"^[a-z_][a-z0-9_-]{0,62}$", re.IGNORECASE)


def quote_ident(name: str) -> str:
    """Quote a checked identifier for PostgreSQL DDL."""
    if not _IDENT.match(name):
        raise InvalidInput(f"{name!r} is not a valid database identifier", field="name")
    return '"' + name + '"'


def _pg_url(settings: Settings, database: str) -> str:
    auth = quote(settings.db_user, safe="")
    if settings.db_password:
        auth += ":" + quote(settings.db_password, safe="")
    return f"postgresql://{auth}@{settings.db_host}:{settings.db_port}/{quote(database, safe='')}"


@dataclass(frozen=True)
class TenantDatabase:
    """Where a tenant app keeps its data; stored with the app so every environment agrees."""

    conn_type: str
    name: str
    schema: str | None = None

    @classmethod
    def for_app(cls, settings: Settings, app: str, conn_type: str) -> TenantDatabase:
        if conn_type == "new_schema":
            return cls(conn_type, settings.db_database, app)
        return cls("new_database", f"{settings.db_database}_{app}")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TenantDatabase:
        return cls(data["connType"], data["name"], data.get("schema"))

    def to_json(self) -> dict[str, Any]:
        return {"connType": self.conn_type, "name": self.name, "schema": self.schema}


def registry_database(settings: Settings) -> Database:
    """The supervisor's own database (not yet connected)."""
    if settings.db_dialect == "postgres":
        return Database(_pg_url(settings, settings.db_database), min_size=1, max_size=10)
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    return sqlite_database(settings.storage_dir / "nocosup.sqlite")


async def connect_registry(settings: Settings) -> Database:
    """Connect the registry database, creating the PostgreSQL database if it is missing."""
    db = registry_database(settings)
    try:
        await db.connect()
    except asyncpg.InvalidCatalogNameError:
        await _create_pg_database(settings, settings.db_database, maintenance="postgres")
        db = registry_database(settings)
        await db.connect()
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the registry database: {exc}") from exc
    return db


async def ensure_database(settings: Settings) -> None:
    """Create the PostgreSQL database DB_DATABASE if it is missing."""
    await _create_pg_database(settings, settings.db_database, maintenance="postgres")


class TenantDatabases:
    """Provisions, opens and drops tenant databases for one process's DB settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.files = settings.storage_dir / "databases"

    def sqlite_path(self, spec: TenantDatabase) -> Path:
        return self.files / f"{spec.name}.sqlite"

    def open(self, spec: TenantDatabase, max_size: int = 5) -> Database:
        """A tenant's ``databases.Database`` (not yet connected; tenant pools stay small)."""
        if self.settings.db_dialect == "sqlite":
            return sqlite_database(self.sqlite_path(spec))
        options: dict[str, Any] = {"min_size": 1, "max_size": max_size}
        if spec.schema:
            options["server_settings"] = {"search_path": spec.schema}
        return Database(_pg_url(self.settings, spec.name), **options)

    async def create(self, spec: TenantDatabase) -> None:
        """Make the database (or schema) if it does not exist; keep it if it does."""
        if self.settings.db_dialect == "sqlite":
            if spec.conn_type == "new_schema":
                raise InvalidInput(
                    "options.dbConnType 'new_schema' needs DB_DIALECT=postgres",
                    field="options.dbConnType",
                )
            await self._create_sqlite(spec)
        elif spec.conn_type == "new_schema":
            assert spec.schema is not None
            await self._run(
                spec.name,
                f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.schema)}",
                f"could not create schema {spec.schema!r}",
            )
        else:
            await _create_pg_database(self.settings, spec.name, self.settings.db_database)

    async def drop(self, spec: TenantDatabase) -> None:
        """Delete the tenant's data for good."""
        if self.settings.db_dialect == "sqlite":
            await asyncio.to_thread(_unlink_sqlite, self.sqlite_path(spec))
        elif spec.conn_type == "new_schema":
            assert spec.schema is not None
            await self._run(
                spec.name,
                f"DROP SCHEMA IF EXISTS {quote_ident(spec.schema)} CASCADE",
                f"could not drop schema {spec.schema!r}",
            )
        else:
            await self._run(
                self.settings.db_database,
                f"DROP DATABASE IF EXISTS {quote_ident(spec.name)} WITH (FORCE)",
                f"could not drop database {spec.name!r}",
            )

    async def _create_sqlite(self, spec: TenantDatabase) -> None:
        self.files.mkdir(parents=True, exist_ok=True)
        db = sqlite_database(self.sqlite_path(spec))
        try:
            await db.connect()
            await db.execute("SELECT 1")  # opens the file; WAL is set on every open
            await db.disconnect()
        except Exception as exc:
            raise DatabaseError(f"could not create SQLite database {spec.name!r}: {exc}") from exc

    async def _run(self, database: str, sql: str, what: str) -> None:
        conn = await _pg_connect(self.settings, database)
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            raise DatabaseError(f"{what}: {exc}") from exc
        finally:
            await conn.close()


def _unlink_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


async def _pg_connect(settings: Settings, database: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_pg_url(settings, database), timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL database {database!r}: {exc}") from exc


async def _create_pg_database(settings: Settings, name: str, maintenance: str) -> None:
    """CREATE DATABASE outside any transaction; from template0 so concurrent creates never
    collide on a template someone is connected to."""
    conn = await _pg_connect(settings, maintenance)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0")
        log.info("created database %s", name)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        return  # another process (a replica) created it at the same moment
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"could not create database {name!r}: {exc}") from exc
    finally:
        await conn.close()
