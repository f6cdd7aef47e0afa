"""A FastAPI notes app, one copy per nocosup app, each on its own database.

Nothing in it knows about the prefix it is served under: FastAPI reads it from the
request's ``root_path`` (``/apps/{name}`` in process and through the proxy,
``/tenants/apps/{name}`` when the host is mounted there), for its redirects, its ``/docs``
page and the ``servers`` of its OpenAPI document.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from databases import Database
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field
from sqlalchemy.schema import CreateTable

from nocosup import AppContext

metadata = sa.MetaData()
notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)


class NoteIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=100_000)


class Note(NoteIn):
    id: int


def build_app(ctx: AppContext) -> FastAPI:
    """A FastAPI notes app (CRUD on the app's own database) with its /docs."""
    db: Database = ctx.open_database(max_size=3)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.connect()
        try:
            await db.execute(CreateTable(notes, if_not_exists=True))
            yield
        finally:
            await db.disconnect()

    app = FastAPI(title=f"Notes: {ctx.title}", version="0.1.0", lifespan=lifespan)

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> RedirectResponse:
        return RedirectResponse(request.url_for("swagger_ui_html"), 303)

    @app.get("/notes/", response_model=list[Note])
    async def list_notes() -> list[dict[str, Any]]:
        rows = await db.fetch_all(notes.select().order_by(notes.c.id))
        return [dict(row._mapping) for row in rows]

    @app.post("/notes/", response_model=Note, status_code=201)
    async def create_note(note: NoteIn, request: Request, response: Response) -> dict[str, Any]:
        new_id = await db.execute(notes.insert().values(**note.model_dump()))
        response.headers["Location"] = str(request.url_for("read_note", note_id=new_id))
        return {"id": new_id, **note.model_dump()}

    @app.get("/notes/{note_id}", response_model=Note)
    async def read_note(note_id: int) -> dict[str, Any]:
        row = await db.fetch_one(notes.select().where(notes.c.id == note_id))
        if row is None:
            raise HTTPException(404, f"no note {note_id}")
        return dict(row._mapping)

    @app.put("/notes/{note_id}", response_model=Note)
    async def update_note(note_id: int, note: NoteIn) -> dict[str, Any]:
        await read_note(note_id)
        await db.execute(notes.update().where(notes.c.id == note_id).values(**note.model_dump()))
        return {"id": note_id, **note.model_dump()}

    @app.delete("/notes/{note_id}", status_code=204)
    async def delete_note(note_id: int) -> Response:
        await read_note(note_id)
        await db.execute(notes.delete().where(notes.c.id == note_id))
        return Response(status_code=204)

    return app
