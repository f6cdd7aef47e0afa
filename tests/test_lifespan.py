"""Entering tenant lifespans by hand: state, failures, apps without lifespan support."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette

from nocosup.lifespan import LifespanError, LifespanRunner


async def test_startup_state_and_shutdown() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("up")
        yield {"db": "connected"}
        events.append("down")

    runner = LifespanRunner(Starlette(lifespan=lifespan), "t")
    await runner.startup()
    assert runner.state == {"db": "connected"}
    await runner.shutdown()
    assert events == ["up", "down"]


async def test_failing_startup_raises_with_the_message() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    runner = LifespanRunner(Starlette(lifespan=lifespan), "t")
    with pytest.raises(LifespanError, match="no database"):
        await runner.startup()


async def test_app_without_lifespan_support_starts() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"

    runner = LifespanRunner(bare, "t")
    await runner.startup()
    assert runner.supported is False
    await runner.shutdown()
