"""Tenant databases: where each app keeps its data, and the provisioners that make them.

A :class:`TenantDatabase` is stored with the app record, so every environment agrees on
it. A :class:`Provisioner` creates, opens and drops one kind of tenant database; SQLite
files and PostgreSQL databases or schemas are the built-in ones, and plugins add more
through the ``register_database_provisioners`` hook. :class:`TenantDatabases` is what
the rest of nocosup uses: it hands each spec to the provisioner named in it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
from databases import Database

from nocosup.config import Settings
from nocosup.db import create_pg_database, db_timeouts, pg_connect, pg_url, quote_ident
from nocosup.errors import (
    ConfigError,
    DatabaseError,
    DatabaseNameReserved,
    DatabaseUnavailable,
    InvalidInput,
)
from nocosup.pgpool import ConnectionBudget, pg_database
from nocosup.sqlite import sqlite_database
from nocosup.storage import private_dir

#: The reserved naming scheme of new tenant databases: ``{DB_DATABASE}_app_{app}`` (a file
#: stem with SQLite) and, for ``new_schema``, the schema ``app_{app}``. The infix keeps a
#: tenant from landing on a registry or worker database named ``{DB_DATABASE}_{word}``
#: (the Kubernetes example's ``nocosup_env_a``). Apps made before it keep the names
#: stored in their records.
TENANT_INFIX = "_app_"
SCHEMA_PREFIX = "app_"
#: Databases every PostgreSQL server has: never a tenant's.
SERVER_DATABASES = frozenset({"postgres", "template0", "template1"})
#: PostgreSQL truncates longer identifiers (so two long names could meet).
MAX_IDENTIFIER = 63


def tenant_database_name(database: str, app: str) -> str:
    """The database (or SQLite file stem) a new app ``app`` gets under ``database``."""
    return f"{database}{TENANT_INFIX}{app}"


def tenant_schema_name(app: str) -> str:
    return f"{SCHEMA_PREFIX}{app}"


@dataclass(frozen=True)
class TenantDatabase:
    """Where a tenant app keeps its data.

    ``provisioner`` names the provisioner chosen with ``options.dbProvisioner``; ``None``
    means the one named by each process's own ``DB_DIALECT``.
    """

    conn_type: str
    name: str
    schema: str | None = None
    provisioner: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TenantDatabase:
        return cls(data["connType"], data["name"], data.get("schema"), data.get("provisioner"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"connType": self.conn_type, "name": self.name, "schema": self.schema}
        if self.provisioner is not None:
            out["provisioner"] = self.provisioner
        return out


class ForeignDatabase(DatabaseError):
    """An app record names a database other than the one its app has here."""


class Provisioner(ABC):
    """Creates, opens and drops one kind of tenant database."""

    #: Stored in each spec it makes (``TenantDatabase.provisioner``).
    name: ClassVar[str]
    #: The ``options.dbConnType`` values it supports, the first being the default.
    conn_types: ClassVar[tuple[str, ...]]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abstractmethod
    def spec(self, app: str, conn_type: str) -> TenantDatabase:
        """The database app ``app`` gets (``conn_type`` is one of :attr:`conn_types`)."""

    @abstractmethod
    async def create(self, spec: TenantDatabase) -> None:
        """Make the database if it does not exist; keep it if it does. Raise
        :class:`~nocosup.errors.DatabaseError` saying why when it cannot be made."""

    @abstractmethod
    async def drop(self, spec: TenantDatabase) -> None:
        """Delete the tenant's data for good (nothing to do if it is gone already)."""

    @abstractmethod
    def open(self, spec: TenantDatabase, max_size: int = 5) -> Database:
        """A ``databases.Database`` for the tenant, not yet connected."""

    def url(self, spec: TenantDatabase) -> str | None:
        """The tenant database as a driver-less URL (``postgresql://...``,
        ``sqlite:////abs/path``) for apps that open it themselves; None when this kind
        of database has no URL."""
        return None

    def sqlite_path(self, spec: TenantDatabase) -> Path | None:
        """The database file when the tenant database is a SQLite file, else None."""
        return None

    def location(self) -> str | None:
        """Where this process keeps the data of the apps it provisions, as every process
        can name it (no credentials): two environments giving the same location reach the
        same data, so an app can move between them. None: data on this machine only."""
        return None


class SqliteProvisioner(Provisioner):
    """A SQLite file per app under ``{storage}/databases``."""

    name = "sqlite"
    conn_types = ("new_database",)

    @property
    def files(self) -> Path:
        return self.settings.storage_dir / "databases"

    def path(self, spec: TenantDatabase) -> Path:
        return self.files / f"{spec.name}.sqlite"

    def spec(self, app: str, conn_type: str) -> TenantDatabase:
        name = tenant_database_name(self.settings.tenant_db_base, app)
        return TenantDatabase("new_database", name, None, self.name)

    def open(self, spec: TenantDatabase, max_size: int = 5) -> Database:
        return sqlite_database(self.path(spec), timeout=self.settings.db_statement_timeout)

    def url(self, spec: TenantDatabase) -> str:
        return "sqlite:///" + str(self.path(spec).resolve())

    def sqlite_path(self, spec: TenantDatabase) -> Path:
        return self.path(spec).resolve()

    async def create(self, spec: TenantDatabase) -> None:
        private_dir(self.files)
        db = sqlite_database(self.path(spec))
        try:
            await db.connect()
            await db.execute("SELECT 1")  # opens the file; WAL is set on every open
            await db.disconnect()
        except Exception as exc:
            raise DatabaseError(f"could not create SQLite database {spec.name!r}: {exc}") from exc

    async def drop(self, spec: TenantDatabase) -> None:
        await asyncio.to_thread(_unlink_sqlite, self.path(spec))


def _unlink_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


class PostgresProvisioner(Provisioner):
    """A PostgreSQL database per app (``{DB_DATABASE}_app_{app}``), or a schema per app
    (``app_{app}``) in ``DB_DATABASE``, on the server of the ``DB_*`` settings."""

    name = "postgres"
    conn_types = ("new_database", "new_schema")

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        #: NOCOSUP_DB_MAX_CONNECTIONS: one budget for every tenant pool of this process.
        self.budget = ConnectionBudget(
            settings.db_max_connections, settings.db_pool_idle, settings.db_budget_wait
        )

    def spec(self, app: str, conn_type: str) -> TenantDatabase:
        if conn_type == "new_schema":
            schema = tenant_schema_name(app)
            return TenantDatabase(conn_type, self.settings.tenant_db_base, schema, self.name)
        name = tenant_database_name(self.settings.tenant_db_base, app)
        return TenantDatabase("new_database", name, None, self.name)

    def open(self, spec: TenantDatabase, max_size: int = 5) -> Database:
        # each pool opens connections on demand, within the process's budget
        return pg_database(
            pg_url(self.settings, spec.name),
            self.budget,
            db_timeouts(self.settings),
            max_size=max(1, min(max_size, self.settings.db_max_connections)),
            server_settings={"search_path": spec.schema} if spec.schema else None,
        )

    def url(self, spec: TenantDatabase) -> str:
        # the schema of a new_schema app is not in the URL: it goes on search_path
        return pg_url(self.settings, spec.name)

    def location(self) -> str:
        """The server and the naming base: same server and base, same tenant databases."""
        s = self.settings
        return server_location(s.db_host, s.db_port, s.tenant_db_base)

    async def create(self, spec: TenantDatabase) -> None:
        if spec.schema is not None:
            await self._run(
                spec.name,
                f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.schema)}",
                f"could not create schema {spec.schema!r}",
            )
        else:
            await create_pg_database(self.settings, spec.name, self.settings.db_database)

    async def drop(self, spec: TenantDatabase) -> None:
        if spec.schema is not None:
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

    async def _run(self, database: str, sql: str, what: str) -> None:
        conn = await pg_connect(self.settings, database)
        try:
            await conn.execute(sql)
        except TimeoutError as exc:
            raise DatabaseUnavailable(f"{what}: the database did not answer in time") from exc
        except asyncpg.PostgresError as exc:
            raise DatabaseError(f"{what}: {exc}") from exc
        finally:
            await conn.close()


#: The built-in provisioners, registered by nocosup's own plugin module.
BUILTIN_PROVISIONERS: tuple[type[Provisioner], ...] = (SqliteProvisioner, PostgresProvisioner)


class TenantDatabases:
    """Every provisioner this process knows, by name; the one ``DB_DIALECT`` names is the
    default for new apps."""

    def __init__(self, settings: Settings, provisioners: list[Provisioner]) -> None:
        self.settings = settings
        self.provisioners: dict[str, Provisioner] = {}
        for provisioner in provisioners:
            # the first of a name wins: plugins run before the built-in (trylast) ones
            self.provisioners.setdefault(provisioner.name, provisioner)
        if settings.db_dialect not in self.provisioners:
            raise ConfigError(
                f"DB_DIALECT: no tenant-database provisioner named {settings.db_dialect!r} "
                f"is loaded (loaded: {', '.join(sorted(self.provisioners)) or 'none'})"
            )

    def provisioner(self, spec: TenantDatabase) -> Provisioner:
        name = spec.provisioner or self.settings.db_dialect
        found = self.provisioners.get(name)
        if found is None:
            raise DatabaseError(
                f"database {spec.name!r} was made by provisioner {name!r}, which is not loaded "
                "in this process (install or enable the plugin that provides it)"
            )
        return found

    def spec_for(self, app: str, conn_type: str | None, provisioner: str | None) -> TenantDatabase:
        """The database a new app gets; InvalidInput naming the option when it cannot."""
        name = provisioner or self.settings.db_dialect
        chosen = self.provisioners.get(name)
        if chosen is None:
            raise InvalidInput(
                f"options.dbProvisioner must be one of {', '.join(sorted(self.provisioners))}; "
                f"got {name!r}",
                field="options.dbProvisioner",
            )
        conn = conn_type or chosen.conn_types[0]
        if conn not in chosen.conn_types:
            raise InvalidInput(
                f"options.dbConnType must be one of {', '.join(chosen.conn_types)} for "
                f"provisioner {name!r}; got {conn!r}",
                field="options.dbConnType",
            )
        spec = chosen.spec(app, conn)
        for what, value in (("database", spec.name), ("schema", spec.schema)):
            if value is not None and len(value.encode()) > MAX_IDENTIFIER:
                raise InvalidInput(
                    f"the app's {what} name {value!r} would be longer than {MAX_IDENTIFIER} "
                    "bytes; choose a shorter app name (or a shorter DB_DATABASE)",
                    field="name",
                )
        self.check_reserved(spec)
        # Without an explicit choice, every process uses its own DB_DIALECT's provisioner
        # (a worker on PostgreSQL behind a supervisor on SQLite keeps working as before).
        return spec if provisioner else replace(spec, provisioner=None)

    def check_reserved(self, spec: TenantDatabase) -> None:
        """Raise DatabaseNameReserved when ``spec`` names a database this process uses
        itself (its ``DB_DATABASE``: the registry of a supervisor, a worker's own), one
        every PostgreSQL server has, or a schema PostgreSQL owns (``public``,
        ``information_schema``, ``pg_*``). Checked when an app is created and again
        where its database is made or dropped, so a worker never takes its own."""
        own = self.settings.db_database
        if spec.schema is None and (spec.name == own or spec.name in SERVER_DATABASES):
            whose = (
                "this nocosup process's own database (DB_DATABASE)"
                if spec.name == own
                else ("a database every PostgreSQL server has")
            )
            raise DatabaseNameReserved(
                f"tenant database {spec.name!r} would be {whose}; tenant databases are "
                f"named {{DB_DATABASE}}{TENANT_INFIX}{{app}}: give nocosup's own databases "
                "names outside that scheme"
            )
        schema = spec.schema
        if schema is not None and (
            schema in ("public", "information_schema") or schema.startswith("pg_")
        ):
            raise DatabaseNameReserved(
                f"tenant schema {schema!r} is one PostgreSQL or nocosup's registry uses"
            )

    def derive(self, app: str, options: dict[str, Any], stored: dict[str, Any]) -> TenantDatabase:
        """The database of ``app`` by this process's own settings, as :meth:`spec_for` made
        it at creation; ForeignDatabase when ``stored`` (the record's ``database``, read
        from Redis) names another. A worker never takes a name, path or URL from a
        command: at most it refuses one that differs."""
        conn_type, provisioner = options.get("dbConnType"), options.get("dbProvisioner")
        try:
            spec = self.spec_for(
                app,
                conn_type if isinstance(conn_type, str) else None,
                provisioner if isinstance(provisioner, str) else None,
            )
        except InvalidInput as exc:
            raise ForeignDatabase(f"database of {app!r}: {exc.message}") from None
        if spec.to_json() != stored and _legacy(spec, app).to_json() == stored:
            # created before tenant names took their "_app_" infix: its database keeps
            # the old name, and must still not be one this process uses itself
            spec = _legacy(spec, app)
            self.check_reserved(spec)
        if spec.to_json() != stored:
            raise ForeignDatabase(
                f"the record of {app!r} names database {stored!r:.200}, but this process "
                f"derives {spec.to_json()!r} (do NOCOSUP_TENANT_DB_PREFIX / DB_DATABASE "
                "agree with the supervisor's?)"
            )
        return spec

    def open(self, spec: TenantDatabase, max_size: int = 5) -> Database:
        return self.provisioner(spec).open(spec, max_size=max_size)

    def describe(self) -> dict[str, Any]:
        """What a worker registers about its tenant data: the provisioner apps use unless
        their record names one (``dialect``), and the location of every provisioner whose
        data other environments can reach (``shared``). The supervisor decides from it
        whether an app's data follows it to another environment (a move)."""
        shared = {n: loc for n, p in self.provisioners.items() if (loc := p.location())}
        return {"dialect": self.settings.db_dialect, "shared": shared}

    def url(self, spec: TenantDatabase) -> str | None:
        return self.provisioner(spec).url(spec)

    def sqlite_path(self, spec: TenantDatabase) -> Path | None:
        return self.provisioner(spec).sqlite_path(spec)

    async def create(self, spec: TenantDatabase) -> None:
        self.check_reserved(spec)
        await self.provisioner(spec).create(spec)

    async def drop(self, spec: TenantDatabase) -> None:
        self.check_reserved(spec)
        await self.provisioner(spec).drop(spec)


def server_location(host: str, port: int, base: str) -> str:
    """A PostgreSQL server and tenant naming base as every process can name them.

    A loopback address (``127.0.0.1``, ``::1``, ``localhost``) or a socket directory
    names a different server on every machine (network namespace: a container, a pod),
    and the same server however it is spelled there: it is named ``localhost`` with this
    machine's host name. Any other host is compared as configured."""
    if machine_local(host):
        return f"postgresql://localhost:{port}/{base} on {socket.gethostname()}"
    return f"postgresql://{host}:{port}/{base}"


def machine_local(host: str) -> bool:
    """Whether ``host`` (``DB_HOST``) reaches a server on this machine only."""
    name = host.strip().lower().rstrip(".")
    if not name or name.startswith("/") or name in ("localhost", "localhost.localdomain"):
        return True
    if name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified  # 0.0.0.0 connects here too


def data_location(database: dict[str, Any], described: dict[str, Any] | None) -> str | None:
    """Where an app whose record holds ``database`` keeps its data on an environment
    that registered ``described`` (:meth:`TenantDatabases.describe`); None when only that
    environment's machine reaches it (a SQLite file) or the environment never said."""
    if not described:
        return None
    provisioner = database.get("provisioner") or described.get("dialect")
    shared = described.get("shared") or {}
    found = shared.get(provisioner) if isinstance(provisioner, str) else None
    return found if isinstance(found, str) else None


def local_kind(database: dict[str, Any], described: dict[str, Any] | None) -> str:
    """How to name an app's data that is not reachable elsewhere, for an error message."""
    provisioner = database.get("provisioner") or (described or {}).get("dialect")
    if provisioner == SqliteProvisioner.name:
        return "a SQLite file on the worker"
    if not described:
        return "a place the environment has not registered (a worker older than moves?)"
    return f"a {provisioner} database local to the worker"


def _legacy(spec: TenantDatabase, app: str) -> TenantDatabase:
    """``spec`` as releases before the ``_app_`` infix named it: ``{base}_{app}``, or the
    schema ``{app}``."""
    if spec.schema is not None:
        return replace(spec, schema=app)
    base = spec.name[: -len(TENANT_INFIX + app)]
    return replace(spec, name=f"{base}_{app}")
