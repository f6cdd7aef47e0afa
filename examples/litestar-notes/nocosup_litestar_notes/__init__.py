"""A Litestar app, one copy per nocosup app: its lifespan opens the app's own database.

It opens the database itself, with SQLAlchemy's async engine on
``AppContext.sqlalchemy_url`` (SQLite through aiosqlite, PostgreSQL through asyncpg, a
``new_schema`` app with its schema on ``search_path``). Its OpenAPI document names the
app's prefix (``AppContext.prefix``) as its server, so "try it out" calls the app.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from litestar import Litestar, Request, get, post
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Server
from litestar.params import FromPath, JSONBody
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from nocosup import AppContext

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False),
)


@dataclass
class ItemIn:
    name: str


@dataclass
class Item:
    id: int
    name: str


def build_app(ctx: AppContext) -> Litestar:
    """A Litestar app whose lifespan opens the app's database (SQLAlchemy, async)."""
    url = ctx.sqlalchemy_url
    if url is None:
        raise RuntimeError("litestar-notes needs a SQLite or PostgreSQL tenant database")
    schema = ctx.database_schema
    connect_args = {"server_settings": {"search_path": schema}} if schema else {}

    @contextlib.asynccontextmanager
    async def database(app: Litestar) -> AsyncIterator[None]:
        engine = create_async_engine(url, connect_args=connect_args, pool_size=2)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        app.state.engine = engine
        try:
            yield
        finally:
            await engine.dispose()

    def engine_of(request: Request[Any, Any, Any]) -> AsyncEngine:
        engine: AsyncEngine = request.app.state.engine
        return engine

    @get("/", include_in_schema=False)
    async def home(request: Request[Any, Any, Any]) -> Redirect:
        return Redirect(str(request.url_for("list_items")), status_code=303)

    @get("/items", name="list_items")
    async def list_items(request: Request[Any, Any, Any]) -> list[Item]:
        async with engine_of(request).connect() as conn:
            rows = await conn.execute(items.select().order_by(items.c.id))
            return [Item(id=r.id, name=r.name) for r in rows]

    @post("/items")
    async def create_item(request: Request[Any, Any, Any], data: JSONBody[ItemIn]) -> Item:
        async with engine_of(request).begin() as conn:
            inserted = items.insert().values(name=data.name).returning(items.c.id)
            return Item(id=(await conn.execute(inserted)).scalar_one(), name=data.name)

    @get("/items/{item_id:int}")
    async def read_item(request: Request[Any, Any, Any], item_id: FromPath[int]) -> Item:
        async with engine_of(request).connect() as conn:
            row = (await conn.execute(items.select().where(items.c.id == item_id))).first()
        if row is None:
            raise NotFoundException(f"no item {item_id}")
        return Item(id=row.id, name=row.name)

    return Litestar(
        route_handlers=[home, list_items, create_item, read_item],
        lifespan=[database],
        # Litestar configures the process's logging by default: one process serves many
        # apps (and nocosup), so leave logging to the process.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title=f"Items: {ctx.title}", version="0.1.0", servers=[Server(url=ctx.prefix)]
        ),
    )
