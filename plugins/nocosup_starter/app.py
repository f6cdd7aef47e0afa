"""A small but real tenant app: records in the app's own database, a blob, a WebSocket echo.

Routes (relative to ``/apps/{name}``): ``/admin`` (HTML), ``/api/info``, ``/api/schema``
(the schema version its ``upgrade`` command moves), ``/api/records``
(GET, POST), ``/api/blob?size=N``, ``/api/sleep?ms=N`` (answers after N ms: a slow
request to load an app with) and the WebSocket ``/api/echo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from databases import Database
from sqlalchemy.schema import CreateTable
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from nocosup import strictjson
from nocosup.appctx import AppContext
from nocosup.errors import DatabaseUnavailable
from nocosup.registry import now_iso

MAX_BLOB = 64 * 1024 * 1024
#: Longest /api/sleep, in milliseconds.
MAX_SLEEP_MS = 10_000
BLOB_CHUNK = 64 * 1024
MAX_TITLE = 200
MAX_LIMIT = 1000
#: Largest record body read: a record is a title and a little JSON (413 past it).
MAX_RECORD_BODY = 1 << 20

metadata = sa.MetaData()
records = sa.Table(
    "starter_records",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=True),
    sa.Column("created_at", sa.String(32), nullable=False),
)


#: The version each migration brings the schema to. The lifespan makes the base table
#: (version 1) so a new app serves at once; the ``upgrade`` command applies the rest.
schema_table = sa.Table(
    "starter_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        2,
        "index the records by creation time",
        "CREATE INDEX IF NOT EXISTS starter_records_created ON starter_records (created_at)",
    ),
    (
        3,
        "index the records by title",
        "CREATE INDEX IF NOT EXISTS starter_records_title ON starter_records (title)",
    ),
)
LATEST = MIGRATIONS[-1][0]


async def schema_version(db: Database) -> int:
    """The version the app's schema is at (1 before any upgrade)."""
    await db.execute(CreateTable(schema_table, if_not_exists=True))
    found = await db.fetch_val(sa.select(schema_table.c.version).where(schema_table.c.id == 1))
    return int(found) if found is not None else 1


async def migrate(db: Database, progress: Callable[[str], None]) -> int:
    """Apply the migrations the schema lacks, each in its own transaction; returns the
    version reached."""
    await db.execute(CreateTable(records, if_not_exists=True))
    version = await schema_version(db)
    pending = [m for m in MIGRATIONS if m[0] > version]
    for i, (target, what, ddl) in enumerate(pending, start=1):
        progress(f"migration {i} of {len(pending)}: {what}")
        async with db.transaction():
            await db.execute(ddl)
            if version == 1:
                await db.execute(schema_table.insert().values(id=1, version=target))
            else:
                await db.execute(
                    schema_table.update().where(schema_table.c.id == 1).values(version=target)
                )
        version = target
    return version


class _Invalid(HTTPException):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(422, message)
        self.field = field


def _error(code: str, message: str, status: int, **details: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **details}}, status)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, read as a stream that stops past ``limit`` bytes (then None, once up to
    ``limit`` more bytes were read and dropped so that the client gets the 413 rather
    than a reset connection)."""
    declared = request.headers.get("content-length", "")
    chunks: list[bytes] = []
    size = 0
    over = declared.isdigit() and int(declared) > limit
    if over and int(declared) > 2 * limit:
        return None
    async for chunk in request.stream():
        size += len(chunk)
        if size > 2 * limit:
            return None
        if size > limit:
            over = True
        if not over:
            chunks.append(chunk)
    return None if over else b"".join(chunks)


def _record_json(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "title": m["title"],
        "data": json.loads(m["data"]) if m["data"] is not None else None,
        "created_at": m["created_at"],
    }


def build_app(ctx: AppContext) -> Starlette:
    """The starter ASGI app for tenant ``ctx``; its database opens in its lifespan."""
    db: Database = ctx.open_database(max_size=5)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db.connect()
        try:
            await db.execute(CreateTable(records, if_not_exists=True))
            yield
        finally:
            await db.disconnect()

    def info() -> dict[str, Any]:
        return {
            "app": ctx.name,
            "environment": ctx.environment,
            "instance": ctx.instance,
            "pid": ctx.pid,
        }

    async def get_info(request: Request) -> Response:
        return JSONResponse(info())

    async def get_schema(request: Request) -> Response:
        return JSONResponse({"version": await schema_version(db), "latest": LATEST})

    async def list_records(request: Request) -> Response:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise _Invalid(f"limit must be a whole number from 1 to {MAX_LIMIT}", "limit")
        rows = await db.fetch_all(records.select().order_by(records.c.id).limit(int(raw)))
        return JSONResponse({"app": ctx.name, "records": [_record_json(r) for r in rows]})

    async def create_record(request: Request) -> Response:
        raw = await _read_limited(request, MAX_RECORD_BODY)
        if raw is None:
            message = f"request body is larger than the limit of {MAX_RECORD_BODY} bytes"
            response = _error("PAYLOAD_TOO_LARGE", message, 413, limit=MAX_RECORD_BODY)
            response.headers["connection"] = "close"  # the rest of the body is not read
            return response
        try:
            body = strictjson.loads(raw or b"null")
        except strictjson.JSONRejected as exc:
            extra = {"field": exc.path} if exc.path else {}
            return _error(
                "INVALID_JSON", f"request body is not acceptable JSON: {exc}", 422, **extra
            )
        if not isinstance(body, dict):
            return _error("INVALID_JSON", "request body must be a JSON object", 422)
        unknown = sorted(set(body) - {"title", "data"})
        if unknown:
            raise _Invalid(f"unknown field {unknown[0]!r}; allowed: title, data", unknown[0])
        title = body.get("title")
        if not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE:
            raise _Invalid(
                f"title must be a non-empty string of at most {MAX_TITLE} characters", "title"
            )
        data = json.dumps(body["data"]) if body.get("data") is not None else None
        created = now_iso()
        new_id = await db.execute(
            records.insert().values(title=title, data=data, created_at=created)
        )
        row = await db.fetch_one(records.select().where(records.c.id == new_id))
        return JSONResponse(_record_json(row), status_code=201)

    async def blob(request: Request) -> Response:
        raw = request.query_params.get("size", "")
        if not raw.isdigit() or int(raw) > MAX_BLOB:
            raise _Invalid(f"size must be a whole number of bytes from 0 to {MAX_BLOB}", "size")
        size = int(raw)

        async def chunks() -> AsyncIterator[bytes]:
            full = b"x" * BLOB_CHUNK
            left = size
            while left > 0:
                n = min(left, BLOB_CHUNK)
                yield full if n == BLOB_CHUNK else full[:n]
                left -= n

        return StreamingResponse(
            chunks(), media_type="application/octet-stream", headers={"content-length": str(size)}
        )

    async def sleep(request: Request) -> Response:
        raw = request.query_params.get("ms", "")
        if not raw.isdigit() or int(raw) > MAX_SLEEP_MS:
            raise _Invalid(f"ms must be a whole number from 0 to {MAX_SLEEP_MS}", "ms")
        await asyncio.sleep(int(raw) / 1000)
        return JSONResponse({**info(), "slept_ms": int(raw)})

    async def admin(request: Request) -> Response:
        rows = await db.fetch_all(records.select().order_by(records.c.id).limit(MAX_LIMIT))
        assert ctx.environment is not None  # app_factory is told where the app runs
        name = html.escape(ctx.name)
        items = "\n".join(
            f"<tr><td>{r._mapping['id']}</td><td>{html.escape(r._mapping['title'])}</td>"
            f"<td>{html.escape(r._mapping['created_at'])}</td></tr>"
            for r in rows
        )
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(ctx.title)} · {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem}}</style></head>
<body><h1>{html.escape(ctx.title)}</h1>
<p>Application <code id="app-name">{name}</code> in environment
<code>{html.escape(ctx.environment)}</code> (instance {html.escape(ctx.instance)}).</p>
<h2>Records ({len(rows)})</h2>
<table id="records"><tr><th>id</th><th>title</th><th>created</th></tr>
{items}
</table></body></html>"""
        return HTMLResponse(page)

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await ws.send_text(message["text"])
                elif message.get("bytes") is not None:
                    await ws.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            return

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if isinstance(exc, _Invalid):
            extra = {"field": exc.field} if exc.field else {}
            return _error("VALIDATION_ERROR", exc.detail, 422, **extra)
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return _error(code, exc.detail, exc.status_code)

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        # the database did not answer in time, or the process's connection budget is spent
        assert isinstance(exc, DatabaseUnavailable)
        return JSONResponse(exc.body(), exc.status, headers=exc.headers())

    return Starlette(
        routes=[
            Route("/admin", admin),
            Route("/api/info", get_info),
            Route("/api/schema", get_schema),
            Route("/api/records", list_records, methods=["GET"]),
            Route("/api/records", create_record, methods=["POST"]),
            Route("/api/blob", blob),
            Route("/api/sleep", sleep),
            WebSocketRoute("/api/echo", echo),
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            DatabaseUnavailable: database_unavailable,
        },
    )
