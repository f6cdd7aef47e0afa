"""Everything that touches a SQL database goes through here (the ``databases`` package).

It opens the registry database and holds the PostgreSQL helpers the tenant-database
provisioners share (:mod:`nocosup.provisioning`). Identifiers cannot be bound as
parameters, so every name is checked against a strict pattern before it is quoted into DDL.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import quote

import asyncpg
from databases import Database

from nocosup.config import Settings
from nocosup.errors import DatabaseError, DatabaseUnavailable, InvalidInput
from nocosup.pgpool import ConnectionBudget, DbTimeouts, pg_database
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


#: Connections of the registry's own pool (outside NOCOSUP_DB_MAX_CONNECTIONS).
REGISTRY_CONNECTIONS = 10


def db_timeouts(settings: Settings) -> DbTimeouts:
    return DbTimeouts(settings.db_connect_timeout, settings.db_statement_timeout)


def registry_database(settings: Settings) -> Database:
    """The supervisor's own database (not yet connected), with the connect and statement
    timeouts of NOCOSUP_DB_CONNECT_TIMEOUT and NOCOSUP_DB_STATEMENT_TIMEOUT."""
    if settings.db_dialect == "postgres":
        budget = ConnectionBudget(
            REGISTRY_CONNECTIONS, settings.db_pool_idle, settings.db_budget_wait
        )
        return pg_database(
            pg_url(settings, settings.db_database),
            budget,
            db_timeouts(settings),
            max_size=REGISTRY_CONNECTIONS,
        )
    private_dir(settings.storage_dir)
    return sqlite_database(
        settings.storage_dir / "nocosup.sqlite", timeout=settings.db_statement_timeout
    )


async def connect_registry(settings: Settings) -> Database:
    """Connect the registry database, creating the PostgreSQL database if it is missing."""
    db = registry_database(settings)
    try:
        await db.connect()
    except asyncpg.InvalidCatalogNameError:
        await create_pg_database(settings, settings.db_database, maintenance="postgres")
        db = registry_database(settings)
        await db.connect()
    except DatabaseUnavailable as exc:
        raise DatabaseError(f"cannot connect to the registry database: {exc.message}") from exc
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to the registry database: {exc}") from exc
    return db


async def ensure_database(settings: Settings) -> None:
    """Create the PostgreSQL database DB_DATABASE if it is missing."""
    await create_pg_database(settings, settings.db_database, maintenance="postgres")


async def pg_connect(settings: Settings, database: str) -> asyncpg.Connection:
    """A single connection (DDL runs outside pools), with the configured timeouts."""
    try:
        async with asyncio.timeout(settings.db_connect_timeout + 1):
            conn: asyncpg.Connection = await asyncpg.connect(
                pg_url(settings, database),
                timeout=settings.db_connect_timeout,
                command_timeout=settings.db_statement_timeout,
            )
            return conn
    except (TimeoutError, OSError) as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL database {database!r}: "
            f"{exc or 'no answer within NOCOSUP_DB_CONNECT_TIMEOUT'}"
        ) from exc
    except asyncpg.PostgresError as exc:
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
    except TimeoutError as exc:
        raise DatabaseUnavailable(f"could not create database {name!r}: no answer") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"could not create database {name!r}: {exc}") from exc
    finally:
        await conn.close()
