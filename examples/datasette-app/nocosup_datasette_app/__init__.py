"""Datasette serving a nocosup app's own SQLite database, one instance per app.

Datasette builds its links from its ``base_url`` setting, known when it is built: it is
``AppContext.prefix`` plus a slash. Datasette 0.65 gets one thing wrong
either way with a ``base_url``: given the full path it puts the prefix twice in its
``rel="alternate"`` links, given the path without the prefix its slash and tilde redirects
miss the prefix. :func:`within_prefix` gives it the path without the prefix and puts the
prefix back on a redirect to a path outside it. It needs the app's database to be a SQLite file
(``DB_DIALECT=sqlite``, or ``options.dbProvisioner: "sqlite"`` on a PostgreSQL
deployment). A secret of the app's own, kept in its storage directory, signs its cookies.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

from datasette.app import Datasette  # type: ignore[import-untyped]

from nocosup import AppContext

#: A few rows so that a new app has something to browse.
SEED = [
    ("Welcome", "This table lives in the app's own SQLite file."),
    ("Facets", "Datasette lists, filters and facets these rows."),
    ("Export", "Every table and query can be downloaded as JSON or CSV."),
]


def build_app(ctx: AppContext) -> Any:
    """Datasette browsing the app's own SQLite database."""
    path = ctx.sqlite_path
    if path is None:
        raise RuntimeError(
            "the datasette template needs a SQLite tenant database: create the app with "
            'options.dbProvisioner "sqlite" (or run with DB_DIALECT=sqlite)'
        )
    _seed(path)
    datasette = Datasette(
        files=[str(path)],
        settings={"base_url": ctx.prefix + "/"},
        secret=_secret(ctx.storage_dir / "datasette-secret"),
        metadata={"title": ctx.title},
    )
    return within_prefix(datasette.app())


def within_prefix(app: Any) -> Any:
    """``app`` seeing paths relative to the request's ``root_path`` (the app's prefix),
    its redirects to a bare absolute path put back under that prefix."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        root: str = scope.get("root_path", "")
        if not root or scope["type"] != "http" or not scope["path"].startswith(root):
            await app(scope, receive, send)
            return
        scope = dict(scope, path=scope["path"][len(root) :] or "/")
        encoded = root.encode("latin-1")
        raw = scope.get("raw_path")
        if raw is not None and raw.startswith(encoded):
            scope["raw_path"] = raw[len(encoded) :] or b"/"

        async def send_under_prefix(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message = dict(
                    message,
                    headers=[
                        (k, _under(v, encoded) if k.lower() == b"location" else v)
                        for k, v in message.get("headers", [])
                    ],
                )
            await send(message)

        await app(scope, receive, send_under_prefix)

    return asgi


def _under(location: bytes, prefix: bytes) -> bytes:
    """An absolute path that left the prefix, back under it; anything else as it is."""
    if location.startswith(b"/") and not location.startswith(b"//"):
        if location != prefix and not location.startswith(prefix + b"/"):
            return prefix + location
    return location


def _seed(path: Path) -> None:
    """A table with a few rows in a new app's database (kept as it is after that)."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS notes "
                "(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL)"
            )
            if conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 0:
                conn.executemany("INSERT INTO notes (title, body) VALUES (?, ?)", SEED)
    finally:
        conn.close()


def _secret(file: Path) -> str:
    """The app's signing secret, made once and kept (cookies survive restarts)."""
    try:
        return file.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(32)
        file.write_text(value)
        file.chmod(0o600)
        return value
