"""The registry module: its timestamp format and its tables."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from databases import Database

from nocosup.config import Settings
from nocosup.db import connect_registry
from nocosup.errors import AppExists, DomainTaken
from nocosup.registry import AppRecord, EnvironmentStore, Registry, iso_time, now_iso

#: (table, column) -> (type, max length, nullable), as PostgreSQL describes them.
PG_COLUMNS = {
    ("nocosup_apps", "name"): ("character varying", 40, "NO"),
    ("nocosup_apps", "title"): ("text", None, "NO"),
    ("nocosup_apps", "environments"): ("text", None, "NO"),
    ("nocosup_apps", "options"): ("text", None, "NO"),
    ("nocosup_apps", "database"): ("text", None, "NO"),
    ("nocosup_apps", "desired_state"): ("character varying", 16, "NO"),
    ("nocosup_apps", "version"): ("integer", None, "NO"),
    ("nocosup_apps", "created_at"): ("character varying", 32, "NO"),
    ("nocosup_apps", "updated_at"): ("character varying", 32, "NO"),
    ("nocosup_apps", "domains"): ("text", None, "NO"),


    ("nocosup_apps", "template"): ("character varying", 64, "YES"),
    ("nocosup_environments", "name"): ("character varying", 63, "NO"),
    ("nocosup_environments", "url"): ("text", None, "NO"),
    ("nocosup_environments", "proxy_url"): ("text", None, "NO"),
    ("nocosup_environments", "version"): ("character varying", 32, "NO"),
    ("nocosup_environments", "registered_at"): ("character varying", 32, "NO"),
    ("nocosup_environments", "last_seen_at"): ("character varying", 32, "NO"),
    ("nocosup_environments", "databases"): ("text", None, "YES"),
}


def test_iso_time_has_milliseconds_and_a_z() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_795_594_972.409) == "2026-11-25T08:22:52.409Z"
    assert iso_time(1.2349) == "1970-01-01T00:00:01.234Z"  # truncated, like the old copies
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_iso())
    assert iso_time(0) < iso_time(0.001) < now_iso()  # sortable as text


def test_heartbeat_scores_use_the_same_format() -> None:
    from nocosup.remote import _iso_ms

    assert _iso_ms(1_795_594_972_409) == "2026-11-25T08:22:52.409Z"  # zset scores are ms
    assert _iso_ms(None) is None and _iso_ms(0) is None


async def _migrate_twice_and_use(db: Database) -> None:
    registry = Registry(db)
    await registry.migrate()
    await registry.migrate()  # idempotent: the tables exist now
    record = AppRecord("app1", "App 1", ["local"], {"startMode": "on_first_request"}, {})
    await registry.insert(record)
    with pytest.raises(AppExists):  # the primary key still guards the name
        await registry.insert(record)
    assert await registry.get("app1") == record
    await registry.migrate()  # and keeps the rows
    assert [r.name for r in await registry.list()] == ["app1"]
    store = EnvironmentStore(db)
    await store.upsert({"name": "e" * 63, "url": "http://w:1"})
    await store.upsert({"name": "e" * 63, "url": "http://w:2"})
    assert (await store.list())["e" * 63]["url"] == "http://w:2"


async def test_migrate_on_sqlite(tmp_path: Path) -> None:
    db = await connect_registry(Settings(storage_dir=tmp_path))
    try:
        await _migrate_twice_and_use(db)
        rows = await db.fetch_all(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info('nocosup_apps')"
        )
        columns = {r[0]: (r[1], r[2], r[3]) for r in rows}
        assert columns["name"] == ("VARCHAR(40)", 1, 1)
        assert columns["desired_state"] == ("VARCHAR(16)", 1, 0)
        assert columns["database"] == ("TEXT", 1, 0)
        assert columns["version"] == ("INTEGER", 1, 0)
    finally:
        await db.disconnect()


async def test_migrate_on_postgres(tmp_path: Path, pg_database: str) -> None:
    settings = Settings(
        storage_dir=tmp_path, db_dialect="postgres", db_database=f"{pg_database}_registry"
    )
    db = await connect_registry(settings)  # creates the database
    try:
        await _migrate_twice_and_use(db)
        rows = await db.fetch_all(
            "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable"
            " FROM information_schema.columns"
            " WHERE table_name IN ('nocosup_apps', 'nocosup_environments')"
        )
        assert {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows} == PG_COLUMNS
        keys = await db.fetch_all(
            "SELECT tc.table_name, tc.constraint_name, kcu.column_name"
            " FROM information_schema.table_constraints tc"
            " JOIN information_schema.key_column_usage kcu USING (constraint_name, table_name)"
            " WHERE tc.constraint_type = 'PRIMARY KEY'"
            " AND tc.table_name IN ('nocosup_apps', 'nocosup_environments')"
            " ORDER BY tc.table_name"
        )
        assert [(r[0], r[1], r[2]) for r in keys] == [
            ("nocosup_apps", "nocosup_apps_pkey", "name"),
            ("nocosup_environments", "nocosup_environments_pkey", "name"),
        ]
    finally:
        await db.disconnect()


#: ``nocosup_apps`` as releases before custom domains made it (no ``domains`` column).
OLD_APPS_TABLE = """
CREATE TABLE nocosup_apps (
    name VARCHAR(40) NOT NULL PRIMARY KEY, title TEXT NOT NULL, environments TEXT NOT NULL,
    options TEXT NOT NULL, database TEXT NOT NULL, desired_state VARCHAR(16) NOT NULL,
    version INTEGER NOT NULL, created_at VARCHAR(32) NOT NULL, updated_at VARCHAR(32) NOT NULL
)"""
#: ``nocosup_environments`` as releases before moves made it (no ``databases`` column).
OLD_ENVIRONMENTS_TABLE = """
CREATE TABLE nocosup_environments (
    name VARCHAR(63) NOT NULL PRIMARY KEY, url TEXT NOT NULL, proxy_url TEXT NOT NULL,
    version VARCHAR(32) NOT NULL, registered_at VARCHAR(32) NOT NULL,
    last_seen_at VARCHAR(32) NOT NULL
)"""
OLD_ROW = """
INSERT INTO nocosup_apps VALUES ('old', 'Old', '["local"]', '{}',
    '{"connType": "new_database", "name": "nocosup_old", "schema": null}', 'running', 3,
    '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')"""


async def _upgrade_old_registry(db: Database) -> None:
    """An old registry gains the domains column; its apps keep everything, with no
    domains, and take domains afterwards. Its environments gain where they keep data."""
    await db.execute(OLD_APPS_TABLE)
    await db.execute(OLD_ROW)
    await db.execute(OLD_ENVIRONMENTS_TABLE)
    registry = Registry(db)
    await registry.migrate()
    await registry.migrate()
    store = EnvironmentStore(db)
    where = {"dialect": "postgres", "shared": {"postgres": "postgresql://db:5432/n"}}
    await store.upsert({"name": "env_a", "url": "http://w:1", "databases": where})
    assert (await store.list())["env_a"]["databases"] == json.dumps(where)
    old = await registry.get("old")
    assert (old.version, old.domains) == (3, [])
    assert old.database["name"] == "nocosup_old"  # an existing app keeps its database
    await registry.update(old.changed(domains=["old.example.com"]))
    assert (await registry.get("old")).domains == ["old.example.com"]
    assert await registry.domain_owners() == {"old.example.com": "old"}


async def _domains_belong_to_one_app(db: Database) -> None:
    registry = Registry(db)
    await registry.migrate()
    crm = await registry.insert(AppRecord("crm", "CRM", ["e"], {}, {}, domains=["crm.example.com"]))
    with pytest.raises(DomainTaken) as taken:
        await registry.insert(AppRecord("shop", "Shop", ["e"], {}, {}, domains=["crm.example.com"]))
    assert "'crm'" in taken.value.message
    assert [r.name for r in await registry.list()] == ["crm"]  # the whole insert rolled back
    shop = await registry.insert(AppRecord("shop", "Shop", ["e"], {}, {}))
    with pytest.raises(DomainTaken):
        await registry.update(shop.changed(domains=["shop.example.com", "crm.example.com"]))
    assert (await registry.get("shop")).domains == []  # the update rolled back too
    assert await registry.domain_owners() == {"crm.example.com": "crm"}
    await registry.update(crm.changed(domains=["new.example.com"]))  # frees the old one
    await registry.update(shop.changed(domains=["crm.example.com"]))
    await registry.delete("shop")  # and a removed app frees its domains
    assert await registry.domain_owners() == {"new.example.com": "crm"}


async def test_domains_and_upgrade_on_sqlite(tmp_path: Path) -> None:
    for i, check in enumerate((_upgrade_old_registry, _domains_belong_to_one_app)):
        db = await connect_registry(Settings(storage_dir=tmp_path / str(i)))
        try:
            await check(db)
        finally:
            await db.disconnect()


async def test_domains_and_upgrade_on_postgres(tmp_path: Path, pg_database: str) -> None:
    for i, check in enumerate((_upgrade_old_registry, _domains_belong_to_one_app)):
        settings = Settings(
            storage_dir=tmp_path, db_dialect="postgres", db_database=f"{pg_database}_reg{i}"
        )
        db = await connect_registry(settings)
        try:
            await check(db)
        finally:
            await db.disconnect()


_OLD_APPS_TABLE = (
    "CREATE TABLE nocosup_apps (name VARCHAR(40) PRIMARY KEY, title TEXT NOT NULL,"
    " environments TEXT NOT NULL, options TEXT NOT NULL, database TEXT NOT NULL,"
    " desired_state VARCHAR(16) NOT NULL, version INTEGER NOT NULL,"
    " created_at VARCHAR(32) NOT NULL, updated_at VARCHAR(32) NOT NULL)"
)


async def _old_registry_gains_template(db: Database) -> None:
    """A registry made before templates keeps its apps and gains the column."""
    await db.execute(_OLD_APPS_TABLE)
    await db.execute(
        "INSERT INTO nocosup_apps VALUES ('old', 'Old', '[\"local\"]', '{}',"
        " '{\"connType\": \"new_database\", \"name\": \"x_old\", \"schema\": null}',"
        " 'running', 3, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')"
    )
    registry = Registry(db)
    await registry.migrate()
    await registry.migrate()  # again: the column is there already
    old = await registry.get("old")
    assert (old.title, old.version, old.template) == ("Old", 3, None)
    await registry.insert(
        AppRecord("new", "New", ["local"], {}, old.database, template="starter")
    )
    assert (await registry.get("new")).template == "starter"
    assert (await registry.get("new")).to_json()["template"] == "starter"


async def test_migrate_adds_the_template_column_on_sqlite(tmp_path: Path) -> None:
    db = await connect_registry(Settings(storage_dir=tmp_path))
    try:
        await _old_registry_gains_template(db)
    finally:
        await db.disconnect()


async def test_migrate_adds_the_template_column_on_postgres(
    tmp_path: Path, pg_database: str
) -> None:
    settings = Settings(
        storage_dir=tmp_path, db_dialect="postgres", db_database=f"{pg_database}_oldreg"
    )
    db = await connect_registry(settings)
    try:
        await _old_registry_gains_template(db)
    finally:
        await db.disconnect()


async def test_supervisors_starting_together_migrate_one_fresh_postgres_registry(
    tmp_path: Path, pg_database: str
) -> None:
    """Four registries (four supervisors' connections) migrate one empty database at the
    same moment: the advisory lock lets one create the tables while the others wait,
    then find them there. Without it, concurrent ``CREATE TABLE IF NOT EXISTS`` can fail
    on PostgreSQL's catalog index."""
    settings = Settings(
        storage_dir=tmp_path, db_dialect="postgres", db_database=f"{pg_database}_race"
    )
    dbs = [await connect_registry(settings) for _ in range(4)]
    try:
        await asyncio.gather(*(Registry(db).migrate() for db in dbs))
        registry = Registry(dbs[0])
        await registry.insert(AppRecord("app1", "App 1", ["e"], {}, {}))
        assert [r.name for r in await Registry(dbs[3]).list()] == ["app1"]
    finally:
        for db in dbs:
            await db.disconnect()
