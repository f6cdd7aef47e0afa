"""Everything that touches a SQL database goes through here (the ``databases`` package).

It opens the registry database and holds the PostgreSQL helpers the tenant-database
provisioners share (:mod:`nocosup.provisioning`). Identifiers cannot be bound as
parameters, so every name is checked against a strict pattern before it is quoted into DDL.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

import asyncpg
from databases import Database

from nocosup.config import Settings
from nocosup.errors import DatabaseError, InvalidInput
from nocosup.sqlite import sqlite_database
from nocosup.storage import private_dir

log = logging.getLogger("nocosup.db")

_IDENT = re.compile(r"[a-z_][a-z0-9_-]{0,62}", re.IGNORECASE)


def quote_ident(name: str) -> str:
    """Quote a checked identifier for PostgreSQL DDL."""
    if not _IDENT.fullmatch(name):
        raise InvalidInput(f"{name!r} is not a valid database identifier", field="name")
    return '"' + name + '"'


def pg_url(settings: Settings, database: str) -> str:
    auth = quote(settings.db_user, safe="")
    if settings.db_password:
        auth += ":" + quote(settings.db_password, safe="")
    return f"postgresql://{auth}@{settings.db_host}:{settings.db_port}/{quote(database, safe='')}"


def registry_database(settings: Settings) -> Database:
    """The supervisor's own database (not yet connected)."""
    if settings.db_dialect == "postgres":
        return Database(pg_url(settings, settings.db_database), min_size=1, max_size=10)
    private_dir(settings.storage_dir)
    return sqlite_database(settings.storage_dir / "nocosup.sqlite")


async def connect_registry(settings: Settings) -> Database:
    """Connect the registry database, creating the PostgreSQL database if it is missing."""
    db = registry_database(settings)
    try:
        await db.connect()
    except asyncpg.InvalidCatalogNameError:
        await create_pg_database(settings, settings.db_database, maintenance="postgres")
        db = registry_database(settings)
        await db.connect()
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the registry database: {exc}") from exc
    return db


async def ensure_database(settings: Settings) -> None:
    """Create the PostgreSQL database DB_DATABASE if it is missing."""
    await create_pg_database(settings, settings.db_database, maintenance="postgres")


async def pg_connect(settings: Settings, database: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(pg_url(settings, database), timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL database {database!r}: {exc}") from exc


async def create_pg_database(settings: Settings, name: str, maintenance: str) -> None:
    """CREATE DATABASE outside any transaction; from template0 so concurrent creates never
    collide on a template someone is connected to."""
    conn = await pg_connect(settings, maintenance)
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
