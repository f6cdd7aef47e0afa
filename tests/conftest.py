"""Shared fixtures: real servers, isolated per test session.

PostgreSQL: one database ``nocosup_t_<hex>`` per session (tenant databases are named
after it) dropped with everything that starts with its name at the end. Redis: one key
prefix per session, cleaned with SCAN + UNLINK. Hosts run as real ``nocosup serve``
processes on free ports of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.inproc import InProc, inproc_settings, running_host
from tests.servers import NocosupServer, ServerFactory

PG_DSN = os.environ.get("NOCOSUP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("NOCOSUP_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for the session; dropped with every tenant database."""
    name = f"nocosup_t_{RUN_ID}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield name
    await drop_databases(f"nocosup_t_{RUN_ID}")


async def drop_databases(prefix: str, at_once: int = 4) -> None:
    """Drop every database whose name starts with ``prefix``, ``at_once`` at a time.

    Each DROP DATABASE waits for a checkpoint (PostgreSQL 15), which takes seconds on a
    busy server; drops waiting together share one, so a session's hundred databases go
    in a few checkpoints instead of a hundred (and leave the server to the other tests
    and runs sooner)."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        query = "SELECT datname FROM pg_database WHERE datname LIKE $1"
        rows = await conn.fetch(query, prefix + "%")
    finally:
        await conn.close()
    names = [row["datname"] for row in rows if row["datname"].startswith(prefix)]
    slots = asyncio.Semaphore(at_once)

    async def drop(db: str) -> None:
        async with slots:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            finally:
                await conn.close()

    await asyncio.gather(*(drop(db) for db in names))


@pytest.fixture(scope="session")
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of the session's own; every key under it is unlinked at the end."""
    prefix = f"nocosup-test-{RUN_ID}"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=500):
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start ``nocosup serve`` processes; every one is stopped when the test ends."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
async def inproc(tmp_path: Path) -> AsyncIterator[InProc]:
    """A host on embedded defaults with the test factory, in this process (no server)."""
    async with running_host(inproc_settings(tmp_path)) as host:
        yield host


@pytest.fixture
def sqlite_server(servers: ServerFactory) -> NocosupServer:
    """A supervisor on embedded defaults (SQLite, no Redis) with the test factory."""
    return servers.start()


_pg_counter = itertools.count(1)


@pytest.fixture
def pg_env(pg_database: str) -> dict[str, str]:
    """DB_* for a registry database of the test's own (the host creates it on start)."""
    return {
        "DB_DIALECT": "postgres",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": "5432",
        "DB_USER": "postgres",
        "DB_DATABASE": f"{pg_database}_{next(_pg_counter):02d}",
    }
