"""The storage directory is private: 0700 when nocosup makes it, its SQLite files 0600
(the -wal and -shm files too), on a real server."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.servers import NocosupServer
from tests.test_tenants import create


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_storage_and_sqlite_files_are_private(sqlite_server: NocosupServer) -> None:
    async with sqlite_server.admin() as c:
        await create(c, "private")
        r = await c.post("/apps/private/api/records", json={"title": "t"})
        assert r.status_code == 201, r.text
        storage = sqlite_server.storage
        assert mode(storage) == 0o700
        assert mode(storage / "databases") == 0o700
        files = [*storage.glob("*.sqlite*"), *storage.glob("databases/*.sqlite*")]
        names = {f.name for f in files}
        assert {"nocosup.sqlite", "nocosup.sqlite-wal", "nocosup.sqlite-shm"} <= names
        assert {"nocosup_app_private.sqlite", "nocosup_app_private.sqlite-wal"} <= names
        assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(0o600) for f in files}
