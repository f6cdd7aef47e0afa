"""What supervisor replicas on one registry share, through Redis.

Any number of supervisors may run on the same registry database and Redis (multi-
environment mode); each answers any admin call and any tenant request. What one process
used to keep to itself is shared here:

* **Admin operations on one app** are serialised by a Redis lock per app
  (``{p}:lock:admin:{app}``) taken inside the process's own per-app lock, so a stop on one
  replica never interleaves with a start of the same app on another.
* **The app table** each replica routes with is kept current by a stamp,
  ``{p}:registry:stamp``, bumped on every registry write together with a ``registry``
  hint on ``{p}:events``. A hint makes the other replicas reload that app at once (and
  tell their ``GET /api/events`` streams); hints can be lost (pub/sub), so every watcher
  round (about a second) also compares the stamp and reloads the whole table when it
  moved without the replica knowing why.
* **Background duties** (checking and rebuilding the config cache, sweeping silent
  instances) run on one replica at a time: the holder of the upkeep lease,
  ``{p}:lease:upkeep``, renewed every round and taken over when it lapses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from nocosup.errors import AppBusy, AppNotFound, BackendUnavailable
from nocosup.rediskeys import Keys
from nocosup.redislock import LockLost, LockTimeout, compare_and_delete, redis_lock
from nocosup.registry import AppRecord, Registry
from nocosup.validation import APP_NAME

if TYPE_CHECKING:
    from nocosup.host import Host
    from nocosup.remote import RemoteProcess

log = logging.getLogger("nocosup.replicas")

#: Take the lease if it is free, renew it if it is ours: 1 when this replica holds it.
_LEAD = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


class Replicas:
    def __init__(
        self,
        host: Host,
        registry: Registry,
        process: RemoteProcess,
        round_seconds: float,
    ) -> None:
        self.host = host
        self.settings = host.settings
        # the same Redis and key names as the process adapter whose app table this keeps
        self.redis: Redis = process.redis
        self.keys: Keys = process.keys
        self.registry = registry
        self.process = process
        self.instance = host.settings.instance_id
        #: The registry stamp the app table was last known to match (None: unknown).
        self.stamp: int | None = None
        #: A lease outlives three missed rounds, so one slow round does not hand it over.
        self.lease_ms = max(int(round_seconds * 3000), 1500)
        settings = host.settings
        #: How long an admin call waits for another replica's call on the same app: as
        #: long as that call may take (a command per environment and a boot).
        self.admin_wait = 3 * settings.command_timeout + settings.boot_wait + 5

    # --- admin serialisation -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def admin_lock(self, name: str) -> AsyncIterator[None]:
        """Hold ``name``'s admin lock across replicas for the body (409 APP_BUSY when
        another replica's call holds it past :attr:`admin_wait`)."""
        try:
            async with redis_lock(
                self.redis, self.keys.admin_lock(name), self.settings.lock_ttl, self.admin_wait
            ):
                yield
        except LockTimeout:
            raise AppBusy(name) from None
        except LockLost:
            raise BackendUnavailable(
                f"lost the admin lock of {name!r} (Redis failed over or stalled); the "
                "operation may be half done: read the app and retry"
            ) from None

    # --- the app table -----------------------------------------------------------------

    async def announce(self, name: str, action: str) -> None:
        """After a registry write: move the stamp and hint the other replicas."""
        hint = {"type": "registry", "app": name, "action": action, "origin": self.instance}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(self.keys.registry_stamp)
            # signed like every event when a cluster secret is set (receivers drop others)
            pipe.publish(
                self.keys.events, self.process.environments.signer.sign_json("event", "", hint)
            )
            stamp, _ = await pipe.execute()
        # Nobody else wrote in between: the table is current without a reload.
        if self.stamp is not None and int(stamp) == self.stamp + 1:
            self.stamp = int(stamp)

    async def on_hint(self, event: dict[str, Any]) -> None:
        """Another replica changed ``event["app"]``: reload it from the registry."""
        name, origin = event.get("app"), event.get("origin")
        if origin == self.instance or not isinstance(name, str) or not APP_NAME.fullmatch(name):
            return  # ours, or not an app name: nothing to look up
        try:
            record: AppRecord | None = await self.registry.get(name)
        except AppNotFound:
            record = None
        self._apply(name, record)

    async def check(self) -> None:
        """Reload the whole table when the stamp moved without this replica knowing."""
        raw = await self.redis.get(self.keys.registry_stamp)
        # an INCR counter (absent: 0); anything else, a foreign write, reads as -1
        valid = isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19
        stamp = 0 if raw is None else int(raw) if valid else -1
        if stamp == self.stamp:
            return
        records = {r.name: r for r in await self.registry.list()}
        for name in set(self.process.records) | set(records):
            self._apply(name, records.get(name))
        self.stamp = stamp

    def _apply(self, name: str, record: AppRecord | None) -> None:
        """Route with ``record`` (None: the app is gone), its custom domains included, and
        tell this replica's event streams when that changes anything. Plugins' registry
        hooks ran on the replica that made the change, and do not run again here."""
        known = self.process.records.get(name)
        if record is None:
            if known is None:
                return
            del self.process.records[name]
            self.host.domain_routes.forget(name)
            action = "removed"
        else:
            if known is not None and (known.version, known.created_at) == (
                record.version,
                record.created_at,
            ):
                return
            self.process.records[name] = record
            self.host.domain_routes.learn(record)
            action = "created" if known is None else "updated"
        self.host.events.publish({"type": "app_changed", "app": name, "action": action})

    # --- background duties -------------------------------------------------------------

    async def lead(self) -> bool:
        """Whether this replica does the background duties this round."""
        held = await self.redis.eval(_LEAD, 1, self.keys.upkeep_lease, self.instance, self.lease_ms)
        return bool(held)

    async def resign(self) -> None:
        """Hand the lease over at once on a clean stop (else it lapses by itself)."""
        with contextlib.suppress(Exception):
            await compare_and_delete(self.redis, self.keys.upkeep_lease, self.instance)
