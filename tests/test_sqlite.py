"""The kept-open SQLite backend: transactions of concurrent tasks stay apart, idle
connections close (and their threads end) and reopen on the next query."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from nocosup.sqlite import SharedSQLitePool, sqlite_database
from tests.inproc import inproc_settings, running_host


async def test_concurrent_transactions_do_not_mix(tmp_path: Path) -> None:
    db = sqlite_database(tmp_path / "t.sqlite")
    await db.connect()
    try:
        await db.execute("CREATE TABLE t (who TEXT, n INT)")

        async def writer(who: str, fail: bool) -> None:
            try:
                async with db.transaction():
                    for n in range(5):
                        await db.execute(f"INSERT INTO t VALUES ('{who}', {n})")
                        await asyncio.sleep(0)
                    if fail:
                        raise RuntimeError("roll back")
            except RuntimeError:
                pass

        await asyncio.gather(writer("kept", False), writer("rolled", True), writer("also", False))
        rows = await db.fetch_all("SELECT who, count(*) FROM t GROUP BY who ORDER BY who")
        assert [tuple(r._mapping.values()) for r in rows] == [("also", 5), ("kept", 5)]
    finally:
        await db.disconnect()


async def test_idle_connection_closes_and_reopens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SharedSQLitePool, "IDLE_CLOSE", 0.3)
    db = sqlite_database(tmp_path / "t.sqlite")
    pool = db._backend._pool  # type: ignore[attr-defined]
    await db.connect()
    try:
        await db.execute("CREATE TABLE t (a INT)")
        await db.execute("INSERT INTO t VALUES (1)")
        first = pool._connection
        thread = first._thread
        assert thread.is_alive()
        await closed(pool, thread)
        assert await db.fetch_val("SELECT count(*) FROM t") == 1
        assert pool._connection is not None and pool._connection is not first
        thread = pool._connection._thread
    finally:
        await db.disconnect()
    await closed(pool, thread)


async def closed(pool: SharedSQLitePool, thread: threading.Thread) -> None:
    """The pool dropped its connection, whose thread ends a moment later."""
    for _ in range(100):
        if pool._connection is None and not thread.is_alive():
            return
        await asyncio.sleep(0.05)
    assert pool._connection is None and not thread.is_alive()


async def test_a_registry_locked_past_the_busy_timeout_is_503(tmp_path: Path) -> None:
    """Another process holding the registry file (several ``--workers`` on SQLite) past
    NOCOSUP_DB_STATEMENT_TIMEOUT: the admin call gets 503 DATABASE_UNAVAILABLE, not 500,
    and goes through once the file is free."""
    settings = inproc_settings(tmp_path, NOCOSUP_DB_STATEMENT_TIMEOUT="0.3")
    async with running_host(settings) as served:
        other = sqlite3.connect(served.storage / "nocosup.sqlite", isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            r = await served.api.post("/api/apps", json={"name": "crm"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
            assert "locked" in r.json()["error"]["message"]
            assert r.headers["retry-after"] == "5"
            other.execute("ROLLBACK")
        finally:
            other.close()
        r = await served.api.post("/api/apps", json={"name": "crm"})
        assert r.status_code == 201, r.text
