"""The app registry: the supervisor's table of apps, the source of truth.

Redis (in multi-environment mode) only caches what is here and can be rebuilt from it.
Every write bumps the row's ``version`` so caches can tell stale copies apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.schema import CreateIndex, CreateTable

from nocosup.errors import AppExists, AppNotFound, DomainTaken
from nocosup.listing import AppQuery
from nocosup.templates import NAME as TEMPLATE_NAME
from nocosup.validation import APP_NAME, DOMAIN, MAX_DOMAINS

metadata = sa.MetaData()
#: ``pg_advisory_xact_lock`` key that serialises :meth:`Registry.migrate` across processes
#: (an arbitrary constant: "nocosup" in ASCII).
MIGRATION_LOCK = 0x6E6F636F737570
apps_table = sa.Table(
    "nocosup_apps",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("environments", sa.Text, nullable=False),
    sa.Column("options", sa.Text, nullable=False),
    sa.Column("database", sa.Text, nullable=False),
    sa.Column("desired_state", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.String(32), nullable=False),
    # added after the first release: Registry.migrate adds it to older tables
    sa.Column("domains", sa.Text, nullable=False, server_default="[]"),
    sa.Column("template", sa.String(64), nullable=True),
)

#: Custom domains, one row each: the primary key makes a domain belong to one app even
#: when two supervisors write at once (the app's ``domains`` column is the ordered copy).
domains_table = sa.Table(
    "nocosup_domains",
    metadata,
    sa.Column("domain", sa.String(253), primary_key=True),
    sa.Column("app", sa.String(40), nullable=False, index=True),
)

environments_table = sa.Table(
    "nocosup_environments",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("proxy_url", sa.Text, nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("registered_at", sa.String(32), nullable=False),
    sa.Column("last_seen_at", sa.String(32), nullable=False),
    # added with moves: where the environment keeps app data (TenantDatabases.describe)
    sa.Column("databases", sa.Text, nullable=True),
)

#: Answers of admin calls made with an Idempotency-Key (nocosup.idempotency), shared by
#: every supervisor on this database so a retry on any replica gets the first answer.
idempotency_table = sa.Table(
    "nocosup_idempotency",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("status", sa.Integer, nullable=True),
    sa.Column("body", sa.Text, nullable=True),
    sa.Column("location", sa.Text, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
)

#: Web page sessions: the login cookie holds a random id; only its keyed hash is kept here,
#: shared by every supervisor on this database (nocosup.sessions).
sessions_table = sa.Table(
    "nocosup_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
)


def iso_time(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as UTC ISO 8601 with milliseconds and a
    Z, e.g. ``2026-11-25T08:22:52.409Z``: the one timestamp format nocosup writes, sortable
    as text."""
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_iso() -> str:
    """UTC now, formatted by :func:`iso_time`."""
    return iso_time()


class InvalidRecord(ValueError):
    """An app record (from Redis or a command) that does not hold what a record must."""


_REQUIRED = ("name", "title", "environments", "options", "database")
_FIELD_TYPES: dict[str, type] = {
    "title": str,
    "options": dict,
    "database": dict,
    "desired_state": str,
    "version": int,
    "created_at": str,
    "updated_at": str,
}
_DEFAULTS: dict[str, Any] = {
    "desired_state": "running",
    "version": 1,
    "created_at": "",
    "updated_at": "",
}


@dataclass(frozen=True)
class AppRecord:
    """One registered app as stored; ``to_json`` gives its API shape minus live statuses."""

    name: str
    title: str
    environments: list[str]
    options: dict[str, Any]
    database: dict[str, Any]
    desired_state: str = "running"
    version: int = 1
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    #: Custom domains: a request whose Host is one of them goes to this app at "/".
    domains: list[str] = field(default_factory=list)
    #: The installed template that builds the app (nocosup.templates); None: the default
    #: factory (NOCOSUP_APP_FACTORY, else the app_factory hook, else the starter).
    template: str | None = None

    @property
    def start_mode(self) -> str:
        mode: str = self.options.get("startMode", "on_first_request")
        return mode

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "environments": list(self.environments),
            "options": self.options,
            "database": self.database,
            "desired_state": self.desired_state,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "domains": list(self.domains),
            "template": self.template,
        }

    @classmethod
    def from_json(cls, data: Any) -> AppRecord:
        """The record ``data`` describes, every field checked (type, app name, state):
        records also come from Redis (the config cache, commands), which may hold anything.
        Raises :class:`InvalidRecord` naming the first bad field."""
        if not isinstance(data, dict):
            raise InvalidRecord(f"an app record must be a JSON object, not {type(data).__name__}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise InvalidRecord(f"app record misses {', '.join(missing)}")
        name = data["name"]
        if not isinstance(name, str) or not APP_NAME.fullmatch(name):
            raise InvalidRecord(f"app record has an invalid name {name!r:.80}")
        envs = data["environments"]
        if not isinstance(envs, list) or not envs or not all(isinstance(e, str) for e in envs):
            raise InvalidRecord(f"app record {name!r}: environments must be a list of names")
        for key, kind in _FIELD_TYPES.items():
            value = data.get(key, _DEFAULTS.get(key))
            if not isinstance(value, kind) or isinstance(value, bool):
                raise InvalidRecord(f"app record {name!r}: {key} must be a {kind.__name__}")
        db = data["database"]
        if not (
            isinstance(db.get("connType"), str)
            and isinstance(db.get("name"), str)
            and isinstance(db.get("schema"), str | None)
        ):
            raise InvalidRecord(f"app record {name!r}: database needs connType, name, schema")
        template = data.get("template")
        if template is not None and not (
            isinstance(template, str) and TEMPLATE_NAME.fullmatch(template)
        ):
            raise InvalidRecord(f"app record {name!r}: template must be a template name or null")
        if data.get("desired_state", "running") not in ("running", "stopped"):
            raise InvalidRecord(f"app record {name!r}: desired_state must be running or stopped")
        domains = data.get("domains", [])  # absent in records written before domains
        if (
            not isinstance(domains, list)
            or len(domains) > MAX_DOMAINS
            or not all(isinstance(d, str) and DOMAIN.fullmatch(d) for d in domains)
        ):
            raise InvalidRecord(f"app record {name!r}: domains must be a list of host names")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def changed(self, **changes: Any) -> AppRecord:
        """A copy with ``changes``, the version bumped and ``updated_at`` set."""
        return replace(self, **changes, version=self.version + 1, updated_at=now_iso())


def _row_to_record(row: Any, parsed: dict[str, AppRecord]) -> AppRecord:
    """The record of ``row``; parsing its three JSON columns is most of the cost of a
    1000-app list, so records already parsed at the same version are reused."""
    m = row._mapping
    name, version, created, updated = m["name"], m["version"], m["created_at"], m["updated_at"]
    known = parsed.get(name)
    if known is not None and (known.version, known.created_at, known.updated_at) == (
        version,
        created,
        updated,
    ):
        return known
    record = parsed[name] = AppRecord(
        name=name,
        title=m["title"],
        environments=json.loads(m["environments"]),
        options=json.loads(m["options"]),
        database=json.loads(m["database"]),
        desired_state=m["desired_state"],
        version=version,
        created_at=created,
        updated_at=updated,
        domains=json.loads(m["domains"] or "[]"),
        template=m["template"],
    )
    return record


def _filtered(stmt: Any, query: AppQuery) -> Any:
    """``stmt`` narrowed by the filters the registry can answer (status is not one).

    The LIKE patterns are built here and bound whole: a literal ``%`` in the SQL text
    would break the ``databases`` package's parameter formatting.
    """
    if query.prefix is not None:
        stmt = stmt.where(apps_table.c.name.like(_literal(query.prefix) + "%", escape="/"))
    if query.environment is not None:
        # environments is a JSON list of names, and a name cannot contain a quote
        quoted = _literal(json.dumps(query.environment))
        stmt = stmt.where(apps_table.c.environments.like("%" + quoted + "%", escape="/"))
    return stmt


def _literal(text: str) -> str:
    """``text`` matched literally by a LIKE pattern with ``/`` as its escape character."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _record_values(rec: AppRecord) -> dict[str, Any]:
    return {
        "name": rec.name,
        "title": rec.title,
        "environments": json.dumps(rec.environments),
        "options": json.dumps(rec.options, sort_keys=True),
        "database": json.dumps(rec.database, sort_keys=True),
        "desired_state": rec.desired_state,
        "version": rec.version,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "domains": json.dumps(rec.domains),
        "template": rec.template,
    }


class Registry:
    """CRUD over ``nocosup_apps``; raises AppExists / AppNotFound, never a driver error."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._parsed: dict[str, AppRecord] = {}

    async def migrate(self) -> None:
        """Create the tables of :data:`metadata` that do not exist yet; safe to repeat.

        The DDL is compiled from the ``sa.Table`` definitions for the connected dialect.
        On PostgreSQL it runs in one transaction under an advisory lock: two supervisors
        starting together on a fresh registry would otherwise race, and one of two
        concurrent ``CREATE TABLE IF NOT EXISTS`` can fail on the catalog's unique index.
        """
        if self.db.url.dialect != "postgresql":
            await self._migrate()
            return
        async with self.db.transaction():
            await self.db.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await self._migrate()

    async def _migrate(self) -> None:
        for table in metadata.sorted_tables:
            await self.db.execute(CreateTable(table, if_not_exists=True))
            for index in table.indexes:
                await self.db.execute(CreateIndex(index, if_not_exists=True))
        # added after the first release: registries made before lack them
        await self._add_column("domains", "TEXT NOT NULL DEFAULT '[]'")
        await self._add_column("template", "VARCHAR(64)")
        await self._add_column("databases", "TEXT", table="nocosup_environments")

    async def domain_owners(self) -> dict[str, str]:
        """Every claimed domain and the app that has it."""
        rows = await self.db.fetch_all(domains_table.select())
        return {r._mapping["domain"]: r._mapping["app"] for r in rows}

    async def page(self, query: AppQuery, limit: int) -> list[AppRecord]:
        """Up to ``limit`` records matching ``query``'s registry filters, in name order,
        after ``query.after``: a range scan of the primary key, however deep the page."""
        stmt = _filtered(apps_table.select(), query)
        if query.after is not None:
            stmt = stmt.where(apps_table.c.name > query.after)
        rows = await self.db.fetch_all(stmt.order_by(apps_table.c.name).limit(limit))
        return [_row_to_record(r, self._parsed) for r in rows]

    async def count(self, query: AppQuery) -> int:
        """How many records match ``query``'s registry filters (its cursor aside)."""
        stmt = _filtered(sa.select(sa.func.count()).select_from(apps_table), query)
        return int(await self.db.fetch_val(stmt) or 0)

    async def _add_column(self, column: str, sql_type: str, table: str = "nocosup_apps") -> None:
        """Add ``column`` to a ``table`` made before it existed (idempotent).

        On SQLite two processes may race here (there is no advisory lock): the loser's
        ALTER fails, and the column is there all the same."""
        if self.db.url.dialect == "postgresql":
            await self.db.execute(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {sql_type}"
            )
            return
        if await self._has_column(table, column):
            return
        try:
            await self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
        except Exception:
            if not await self._has_column(table, column):
                raise

    async def _has_column(self, table: str, column: str) -> bool:
        rows = await self.db.fetch_all(f"PRAGMA table_info({table})")
        return any(row._mapping["name"] == column for row in rows)

    async def list(self) -> list[AppRecord]:
        rows = await self.db.fetch_all(
            apps_table.select().order_by(apps_table.c.created_at, apps_table.c.name)
        )
        return [_row_to_record(r, self._parsed) for r in rows]

    async def get(self, name: str) -> AppRecord:
        row = await self.db.fetch_one(apps_table.select().where(apps_table.c.name == name))
        if row is None:
            raise AppNotFound(name)
        return _row_to_record(row, self._parsed)

    async def insert(self, rec: AppRecord) -> AppRecord:
        """Claim the name and the domains: the primary keys make concurrent creates of one
        name (AppExists) or one domain (DomainTaken) race-safe."""
        try:
            async with self.db.transaction():
                await self.db.execute(apps_table.insert().values(**_record_values(rec)))
                await self._claim(rec)
        except DomainTaken:
            raise
        except Exception as exc:
            if is_unique_violation(exc):
                raise AppExists(rec.name) from None
            raise
        return rec

    async def update(self, rec: AppRecord) -> AppRecord:
        values = _record_values(rec)
        values.pop("name")
        values.pop("created_at")
        async with self.db.transaction():
            result = await self.db.fetch_one(
                apps_table.update()
                .where(apps_table.c.name == rec.name)
                .values(**values)
                .returning(apps_table.c.name)
            )
            if result is None:
                raise AppNotFound(rec.name)
            await self.db.execute(domains_table.delete().where(domains_table.c.app == rec.name))
            await self._claim(rec)
        return rec

    async def _claim(self, rec: AppRecord) -> None:
        """Insert ``rec``'s domain rows (inside the caller's transaction); DomainTaken
        naming the owner when another app has one."""
        for domain in rec.domains:
            owner = await self.db.fetch_val(
                sa.select(domains_table.c.app).where(domains_table.c.domain == domain)
            )
            if owner is not None and owner != rec.name:
                raise DomainTaken(domain, f"application {owner!r}")
            try:
                await self.db.execute(domains_table.insert().values(domain=domain, app=rec.name))
            except Exception as exc:  # a race with another supervisor: it claimed it first
                if is_unique_violation(exc):
                    raise DomainTaken(domain, "another application") from None
                raise

    async def delete(self, name: str) -> None:
        async with self.db.transaction():
            await self.db.execute(apps_table.delete().where(apps_table.c.name == name))
            await self.db.execute(domains_table.delete().where(domains_table.c.app == name))
        self._parsed.pop(name, None)


def is_unique_violation(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "unique" in text or "duplicate key" in text


class EnvironmentStore:
    """Environments the supervisor has seen, so it can list them (offline) after Redis
    lost its copy. Workers' heartbeats are the truth about who is online."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self) -> dict[str, dict[str, Any]]:
        rows = await self.db.fetch_all(environments_table.select())
        return {r._mapping["name"]: dict(r._mapping) for r in rows}

    async def delete(self, name: str) -> bool:
        """Forget environment ``name``; whether it was stored."""
        row = await self.db.fetch_one(
            environments_table.delete()
            .where(environments_table.c.name == name)
            .returning(environments_table.c.name)
        )
        return row is not None

    async def upsert(self, env: dict[str, Any]) -> None:
        values = {
            "url": env.get("url") or "",
            "proxy_url": env.get("proxy_url") or "",
            "version": env.get("version") or "",
            "last_seen_at": now_iso(),
            "databases": json.dumps(env["databases"]) if env.get("databases") else None,
        }
        async with self.db.transaction():
            updated = await self.db.fetch_one(
                environments_table.update()
                .where(environments_table.c.name == env["name"])
                .values(**values)
                .returning(environments_table.c.name)
            )
            if updated is None:
                await self.db.execute(
                    environments_table.insert().values(
                        name=env["name"],
                        registered_at=env.get("registered_at") or now_iso(),
                        **values,
                    )
                )
