"""``Idempotency-Key`` on create, start and stop: a retry gets the first answer and runs
nothing twice, on this host and on another host sharing the registry database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from nocosup.idempotency import TTL
from nocosup.registry import idempotency_table, iso_time
from tests.inproc import InProc, inproc_settings, running_host
from tests.test_admin_api import assert_error


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def total(api: httpx.AsyncClient) -> int:
    body = (await api.get("/api/apps", params={"limit": 1})).json()
    return int(body["total"])


async def test_a_retried_create_returns_the_first_answer(inproc: InProc) -> None:
    api = inproc.api
    first = await api.post("/api/apps", json={"name": "crm"}, headers=key("k-create-1"))
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = await api.post("/api/apps", json={"name": "crm"}, headers=key("k-create-1"))
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == "/api/apps/crm"
    assert again.json() == first.json()
    assert await total(api) == 1
    # without the key the same body is a new request: the name is taken
    assert_error(await api.post("/api/apps", json={"name": "crm"}), 409, "APP_EXISTS")


async def test_a_key_is_bound_to_its_request(inproc: InProc) -> None:
    api = inproc.api
    r = await api.post("/api/apps", json={"name": "one"}, headers=key("k-bound"))
    assert r.status_code == 201
    for method, path, body in [
        ("POST", "/api/apps", {"name": "two"}),  # another body
        ("POST", "/api/apps/one/start", None),  # another path
        ("POST", "/api/apps?x=1", {"name": "one"}),  # another query
    ]:
        r = await api.request(method, path, json=body, headers=key("k-bound"))
        assert_error(r, 422, "IDEMPOTENCY_KEY_REUSED")
        assert r.json()["error"]["field"] == "Idempotency-Key"
    assert await total(api) == 1


async def test_errors_below_500_are_kept_too(inproc: InProc) -> None:
    api = inproc.api
    assert (await api.post("/api/apps", json={"name": "taken"})).status_code == 201
    r = await api.post("/api/apps", json={"name": "taken"}, headers=key("k-taken"))
    assert_error(r, 409, "APP_EXISTS")
    assert (await api.delete("/api/apps/taken")).status_code == 200
    # the retry is answered, not run: the name is free now, yet no app is created
    r = await api.post("/api/apps", json={"name": "taken"}, headers=key("k-taken"))
    assert_error(r, 409, "APP_EXISTS")
    assert r.headers["Idempotent-Replayed"] == "true"
    assert await total(api) == 0


async def test_a_retried_start_does_not_start_again(inproc: InProc) -> None:
    api = inproc.api
    assert (await api.post("/api/apps", json={"name": "shop"})).status_code == 201
    r = await api.post("/api/apps/shop/start", headers=key("k-start"))
    assert r.status_code == 200 and r.json()["statuses"] == {"local": "running"}
    assert (await api.post("/api/apps/shop/stop")).status_code == 200
    again = await api.post("/api/apps/shop/start", headers=key("k-start"))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    app = (await api.get("/api/apps/shop")).json()
    assert app["statuses"] == {"local": "stopped"} and app["desired_state"] == "stopped"


async def test_a_server_failure_releases_the_key(inproc: InProc) -> None:
    api = inproc.api
    body = {"name": "bad", "options": {"test": {"crash": "lifespan"}}}
    assert (await api.post("/api/apps", json=body)).status_code == 201
    r = await api.post("/api/apps/bad/start", headers=key("k-bad"))
    assert_error(r, 502, "COMMAND_FAILED")
    fixed = await api.patch("/api/apps/bad", json={"options": {"test": None}})
    assert fixed.status_code == 200
    # the retry runs again (and works now): a 5xx is what retries are for
    r = await api.post("/api/apps/bad/start", headers=key("k-bad"))
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers


async def test_a_concurrent_retry_is_told_to_wait(inproc: InProc) -> None:
    api = inproc.api
    body = {"name": "slow", "options": {"test": {"bootDelay": 1.5}}}
    assert (await api.post("/api/apps", json=body)).status_code == 201
    first = asyncio.create_task(api.post("/api/apps/slow/start", headers=key("k-slow")))
    await asyncio.sleep(0.3)  # the first holds the key while the app boots
    r = await api.post("/api/apps/slow/start", headers=key("k-slow"))
    assert_error(r, 409, "IDEMPOTENCY_KEY_IN_USE")
    assert r.headers["Retry-After"] == "1"
    assert (await first).status_code == 200
    r = await api.post("/api/apps/slow/start", headers=key("k-slow"))
    assert r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true"


async def test_a_dead_holders_claim_is_taken_over(inproc: InProc) -> None:
    api = inproc.api
    assert (await api.post("/api/apps", json={"name": "orphan"})).status_code == 201
    db = inproc.host.role.registry_db  # type: ignore[attr-defined]
    now = time.time()
    for name, age in (("k-dead", 10 * 3600), ("k-alive", 0)):
        await db.execute(
            idempotency_table.insert().values(
                key=name,
                fingerprint=_fingerprint_of_start("orphan"),
                state="pending",
                created_at=iso_time(now - age),
                expires_at=iso_time(now - age + TTL),
            )
        )
    r = await api.post("/api/apps/orphan/start", headers=key("k-alive"))
    assert_error(r, 409, "IDEMPOTENCY_KEY_IN_USE")
    r = await api.post("/api/apps/orphan/start", headers=key("k-dead"))
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers


def _fingerprint_of_start(app: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    for part in ("POST", f"/api/apps/{app}/start", ""):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


@pytest.mark.parametrize("bad", [b"has space", b"x" * 256, "é".encode()])
async def test_bad_keys_are_refused(inproc: InProc, bad: bytes) -> None:
    r = await inproc.api.post(
        "/api/apps",
        json={"name": "never"},
        headers={"Idempotency-Key": bad},
    )
    assert_error(r, 422, "VALIDATION_ERROR")
    assert r.json()["error"]["field"] == "Idempotency-Key"
    assert await total(inproc.api) == 0


async def test_a_retry_on_another_host_of_the_registry_is_answered(
    tmp_path: Path, pg_env: dict[str, str]
) -> None:
    """Two hosts on one PostgreSQL registry, as supervisor replicas are."""
    one = inproc_settings(tmp_path / "one", **pg_env)
    two = inproc_settings(tmp_path / "two", **pg_env)
    async with running_host(one) as a, running_host(two) as b:
        r = await a.api.post("/api/apps", json={"name": "shared"}, headers=key("k-replica"))
        assert r.status_code == 201
        again = await b.api.post("/api/apps", json={"name": "shared"}, headers=key("k-replica"))
        assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == r.json()
        assert await total(b.api) == 1
