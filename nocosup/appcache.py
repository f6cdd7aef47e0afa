"""The config cache in Redis: every app record, rebuildable from the registry at any time.

The supervisor writes it on every registry change and rebuilds it when ``{p}:meta`` is
gone (Redis restarted or was flushed); workers read it to learn apps they were not told
about by a command (a first request, a restart).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from nocosup.rediskeys import SCHEMA_VERSION, Keys
from nocosup.registry import AppRecord


class AppCache:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def put(self, record: AppRecord) -> None:
        await self.redis.hset(self.keys.apps, record.name, json.dumps(record.to_json()))

    async def remove(self, name: str) -> None:
        await self.redis.hdel(self.keys.apps, name)

    async def get(self, name: str) -> AppRecord | None:
        raw = await self.redis.hget(self.keys.apps, name)
        return AppRecord.from_json(json.loads(raw)) if raw else None

    async def all(self) -> list[AppRecord]:
        raw = await self.redis.hgetall(self.keys.apps)
        return [AppRecord.from_json(json.loads(v)) for v in raw.values()]

    async def is_built(self) -> bool:
        return bool(await self.redis.exists(self.keys.meta))

    async def rebuild(self, records: Iterable[AppRecord]) -> None:
        """Replace the whole cache atomically with ``records`` and mark it built."""
        mapping: dict[FieldT, EncodableT] = {r.name: json.dumps(r.to_json()) for r in records}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.apps)
            if mapping:
                pipe.hset(self.keys.apps, mapping=mapping)
            pipe.hset(
                self.keys.meta, mapping={"schema": SCHEMA_VERSION, "built_at": f"{time.time():.3f}"}
            )
            await pipe.execute()
