"""The startup lock against real Redis: exclusion, renewal past the TTL, safe release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from nocosup.redislock import LockLost, LockTimeout, RedisLock, redis_lock
from tests.cluster import wait_for
from tests.conftest import REDIS_URL
from tests.inproc import InProc


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def key(redis_prefix: str, request: pytest.FixtureRequest) -> str:
    return f"{redis_prefix}:lock:{request.node.name}"


async def test_holders_never_overlap(redis: aioredis.Redis, key: str) -> None:
    inside = 0
    most = 0

    async def worker() -> None:
        nonlocal inside, most
        async with redis_lock(redis, key, ttl=5, wait=10):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(8)))
    assert most == 1
    assert await redis.exists(key) == 0


async def test_a_held_lock_is_renewed_past_its_ttl(redis: aioredis.Redis, key: str) -> None:
    async with redis_lock(redis, key, ttl=0.3, wait=1) as lock:
        await asyncio.sleep(1.0)  # three TTLs
        assert await redis.get(key) == lock.token
        with pytest.raises(LockTimeout):
            await RedisLock(redis, key, ttl=0.3).acquire(wait=0.2)
    assert await redis.exists(key) == 0


async def test_release_never_deletes_someone_elses_lock(redis: aioredis.Redis, key: str) -> None:
    mine = RedisLock(redis, key, ttl=5)
    await mine.acquire(wait=1)
    await redis.set(key, "someone-else")  # as if ours had expired and been taken
    await mine.release()
    assert await redis.get(key) == "someone-else"
    await redis.delete(key)


async def test_crashed_holder_frees_the_lock_after_its_ttl(redis: aioredis.Redis, key: str) -> None:
    await redis.set(key, "crashed", px=300)
    lock = RedisLock(redis, key, ttl=5)
    await lock.acquire(wait=3)
    assert await redis.get(key) == lock.token
    await lock.release()


async def test_a_lost_lock_aborts_the_work_it_guards(redis: aioredis.Redis, key: str) -> None:
    finished = False
    with pytest.raises(LockLost, match="was lost while held"):
        async with redis_lock(redis, key, ttl=0.3, wait=1) as lock:
            await redis.set(key, "someone-else")  # as if ours had expired and been taken
            await asyncio.sleep(30)  # the next renewal (0.1 s) notices and cancels this
            finished = True
    assert lock.lost and not finished
    assert await redis.get(key) == "someone-else"  # the release left it alone
    await redis.delete(key)


async def test_a_lost_lock_puts_the_boot_it_guarded_in_error(
    redis: aioredis.Redis, key: str, inproc: InProc
) -> None:
    runtime = inproc.host.role.runtime  # type: ignore[attr-defined]
    runtime.boot_guard = lambda name: redis_lock(redis, key, ttl=0.3, wait=1)
    slow = {"name": "guarded", "options": {"test": {"bootDelay": 30}}}
    assert (await inproc.api.post("/api/apps", json=slow)).status_code == 201
    start = asyncio.create_task(inproc.api.post("/api/apps/guarded/start"))
    await wait_for(lambda: redis.exists(key))
    await redis.set(key, "someone-else")
    r = await start
    assert r.status_code == 502, r.text
    error = r.json()["error"]["app"]["errors"]["local"]
    assert error.startswith("LockLost: lock ") and error.endswith("was lost while held")
    tenant = runtime.tenants["guarded"]
    assert tenant.app is None and tenant.lifespan is None
    await redis.delete(key)
