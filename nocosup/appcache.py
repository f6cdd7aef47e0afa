"""The config cache in Redis: every app record, rebuildable from the registry at any time.

The supervisor writes it on every registry change and rebuilds it whole when any part of
it is missing or invalid (:meth:`AppCache.problem`): ``{p}:meta`` gone or of another
schema, ``{p}:apps`` gone or not a hash, a field count that disagrees with the ``count``
kept in meta, a record that does not parse. Workers read it to learn apps they were not
told about by a command (a first request, a restart); a record that does not parse is
logged and skipped, and reported through ``on_invalid`` so the supervisor repairs it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from nocosup.rediskeys import SCHEMA_VERSION, Keys
from nocosup.registry import AppRecord, InvalidRecord
from nocosup.signing import BadSignature, Signer

log = logging.getLogger("nocosup.appcache")

# Field and count change together: meta's count is what the cache holds, so a hash that
# lost fields (or gained some) behind nocosup's back shows as a disagreement.
_PUT = """
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'count', 1)
end
"""
_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'count', -1)
end
"""


def parse_cached(name: object, raw: object, signer: Signer | None = None) -> AppRecord:
    """The record cached under ``name``; InvalidRecord when it is not one (bad JSON, bad
    fields, the record of another name, or with a cluster secret not signed for it)."""
    if not isinstance(raw, str) or not isinstance(name, str):
        raise InvalidRecord("not a string")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRecord(f"not JSON: {exc}") from None
    if signer is not None and isinstance(data, dict):
        try:
            # kept as long as the app is: no age limit
            data = signer.verify_json("app", name, data, None)
        except BadSignature as exc:
            raise InvalidRecord(str(exc)) from None
    record = AppRecord.from_json(data)
    if record.name != name:
        raise InvalidRecord(f"holds the record of {record.name!r}")
    return record


class AppCache:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        on_invalid: Callable[[str, str], None] | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.signer = signer or Signer(None, "")
        #: Called with (app name, reason) for every unreadable entry a read skipped.
        self.on_invalid = on_invalid
        #: How many unreadable entries reads skipped so far.
        self.skipped = 0

    def _invalid(self, name: str, reason: str) -> None:
        self.skipped += 1
        log.warning("config cache entry %.80r skipped: %s", name, reason)
        if self.on_invalid is not None:
            self.on_invalid(name, reason)

    async def put(self, record: AppRecord) -> None:
        await self.redis.eval(
            _PUT, 2, self.keys.apps, self.keys.meta, record.name, self._signed(record)
        )

    def _signed(self, record: AppRecord) -> str:
        return self.signer.sign_json("app", record.name, record.to_json())

    async def remove(self, name: str) -> None:
        await self.redis.eval(_REMOVE, 2, self.keys.apps, self.keys.meta, name)

    async def get(self, name: str) -> AppRecord | None:
        """The cached record of ``name``; None when absent or unreadable (reported)."""
        try:
            raw = await self.redis.hget(self.keys.apps, name)
        except ResponseError as exc:  # WRONGTYPE
            self._invalid(name, f"{self.keys.apps} is not a hash ({exc})")
            return None
        if raw is None:
            return None
        try:
            return parse_cached(name, raw, self.signer)
        except InvalidRecord as exc:
            self._invalid(name, str(exc))
            return None

    async def all(self) -> list[AppRecord]:
        """Every readable cached record; unreadable ones are skipped (reported)."""
        try:
            raw = await self.redis.hgetall(self.keys.apps)
        except ResponseError as exc:
            self._invalid("*", f"{self.keys.apps} is not a hash ({exc})")
            return []
        out = []
        for name, value in raw.items():
            try:
                out.append(parse_cached(name, value, self.signer))
            except InvalidRecord as exc:
                self._invalid(str(name), str(exc))
        return out

    async def problem(self, full: bool = False) -> str | None:
        """What is wrong with the cache, or None when it is sound. Cheap by default (meta,
        the field count); ``full`` also parses every record."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.meta)
            pipe.hlen(self.keys.apps)
            meta, count = await pipe.execute(raise_on_error=False)
        if isinstance(meta, ResponseError) or not meta:
            return f"{self.keys.meta} is missing" if not meta else f"{self.keys.meta}: {meta}"
        if isinstance(count, ResponseError):
            return f"{self.keys.apps} is not a hash ({count})"
        for result in (meta, count):
            if isinstance(result, Exception):
                raise result
        if meta.get("schema") != SCHEMA_VERSION:
            return f"{self.keys.meta} has schema {meta.get('schema')!r:.40}"
        if meta.get("count") != str(count):
            return (
                f"{self.keys.apps} holds {count} records, {self.keys.meta} says "
                f"{meta.get('count')!r:.40}"
            )
        if full:
            raw = await self.redis.hgetall(self.keys.apps)
            for name, value in raw.items():
                try:
                    parse_cached(name, value, self.signer)
                except InvalidRecord as exc:
                    return f"the record {name!r:.80} is invalid: {exc}"
        return None

    async def is_built(self) -> bool:
        return bool(await self.redis.exists(self.keys.meta))

    async def rebuild(self, records: Iterable[AppRecord]) -> None:
        """Replace the whole cache atomically with ``records`` and mark it built."""
        mapping: dict[FieldT, EncodableT] = {r.name: self._signed(r) for r in records}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.apps, self.keys.meta)
            if mapping:
                pipe.hset(self.keys.apps, mapping=mapping)
            pipe.hset(
                self.keys.meta,
                mapping={
                    "schema": SCHEMA_VERSION,
                    "built_at": f"{time.time():.3f}",
                    "count": str(len(mapping)),
                },
            )
            await pipe.execute()
