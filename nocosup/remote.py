"""The supervisor's side of multi-environment mode: environments, commands, proxying.

``RedisEnvironments`` reads the workers' heartbeats; ``RemoteProcess`` turns app
operations into commands awaited per environment; ``ProxyGateway`` sends ``/apps/...``
to the environment that runs the app; ``Watcher`` keeps the environment snapshot fresh,
relays workers' status reports to plugins and live listeners, rebuilds the config cache
when Redis lost it, and sweeps what long-dead instances left behind.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from starlette.types import Receive, Scope, Send

from nocosup.appcache import AppCache
from nocosup.appctx import AppContext
from nocosup.commands import Command, CommandSender, Reply
from nocosup.environments import EnvironmentDirectory
from nocosup.errors import (
    AppNotFound,
    AppStopped,
    BackendUnavailable,
    CommandTimeout,
    EnvironmentNotFound,
    EnvironmentUnavailable,
    NocosupError,
    UpstreamNotAllowed,
)
from nocosup.heartbeat import live_instances, parse_status, status_context
from nocosup.inflight import InFlight, Rescue
from nocosup.lastseen import latest_by_environment
from nocosup.metrics import PROXIED_TO
from nocosup.process import EnvResult, ProcessAdapter, failure_type
from nocosup.redisconn import raise_if_cancelled, subscribed
from nocosup.rediskeys import NAME, Keys, split_member, valid_member
from nocosup.redisurl import mask_url
from nocosup.registry import AppRecord, EnvironmentStore, Registry, iso_time
from nocosup.responses import send_error
from nocosup.signing import MAX_SKEW, BadSignature, RateLimitedLog, Signer
from nocosup.status import BOOTING, AppStatus
from nocosup.upstreams import UpstreamPolicy

if TYPE_CHECKING:
    from nocosup.host import Host
    from nocosup.replicas import Replicas
    from nocosup.supervisor import Supervisor

log = logging.getLogger("nocosup.remote")
#: Forged or stale messages are logged at most every 10 s per kind (a flood stays quiet).
_dropped = RateLimitedLog(log)

#: Seconds between full checks of the config cache (every record parsed).
FULL_CHECK_EVERY = 30

#: Which status wins when the replicas of one environment disagree.
_PRIORITY = [
    AppStatus.ERROR,
    *sorted(BOOTING),
    AppStatus.STOPPING,
    AppStatus.COMMANDING,
    AppStatus.RUNNING,
    AppStatus.IDLE,
    AppStatus.STOPPED,
    AppStatus.NOT_FOUND,
]
_RANK = {s.value: i for i, s in enumerate(_PRIORITY)}


def aggregate(statuses: list[str]) -> str:
    """One status for an environment from its replicas' statuses."""
    if not statuses:
        return AppStatus.STOPPED.value
    return min(statuses, key=lambda s: _RANK.get(s, len(_RANK)))


def _http_url(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL (what a worker registers)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _shown(env: dict[str, Any]) -> dict[str, Any]:
    """An environment as the API shows it: passwords in its URLs masked."""
    return {
        **env,
        **{k: mask_url(env[k]) for k in ("url", "proxy_url") if isinstance(env.get(k), str)},
    }


def _databases(raw: object) -> dict[str, Any] | None:
    """Where an environment keeps app data, as its worker registered it (``{"dialect":
    name, "shared": {provisioner: location}}``), or None when absent or not of that form."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    dialect, shared = value.get("dialect"), value.get("shared")
    if not isinstance(dialect, str) or not isinstance(shared, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in shared.items()):
        return None
    return {"dialect": dialect, "shared": shared}


def _iso_ms(ms: float | None) -> str | None:
    return iso_time(ms / 1000) if ms else None


class RedisEnvironments(EnvironmentDirectory):
    """Environments as the workers' heartbeats describe them.

    Everything read here was written by workers, so it is checked: environment names
    and ``{env}/{instance}`` members must be valid names, scores finite times not far in
    the future, keys of the right type. What is not is logged, skipped and removed (the
    workers write it again with their next heartbeat).
    """

    def __init__(
        self,
        host: Host,
        redis: Redis,
        keys: Keys,
        store: EnvironmentStore,
        ttl: float,
        commands: Redis | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.host = host
        self.signer = signer or Signer(None, host.settings.instance_id)
        self.redis = redis
        #: The Redis of the command streams (and their dead letters).
        self.commands = commands or redis
        self.keys = keys
        self.store = store
        self.ttl = ttl
        #: Last computed view, used on the proxy's hot path (refreshed by the Watcher).
        self.snapshot: dict[str, dict[str, Any]] = {}
        #: Called with an environment's name when it goes from online to offline.
        self.offline_listeners: builtins.list[Callable[[str], object]] = []

    async def list(self) -> list[dict[str, Any]]:
        envs = (await self.refresh()).values()
        return sorted((_shown(e) for e in envs), key=lambda e: e["name"])

    async def get(self, name: str) -> dict[str, Any]:
        """The environment with its dead letters: how many are kept, the last few."""
        known = await self.refresh() if NAME.fullmatch(name) else {}
        if name not in known:
            raise EnvironmentNotFound(f"environment {name!r} is not registered")
        try:
            dead = await self.dead_letters(name)
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer: {exc}") from exc
        return {**_shown(known[name]), "dead_letters": dead}

    async def dead_letters(self, env: str, last: int = 5) -> dict[str, Any]:
        key = self.keys.dead(env)
        try:
            async with self.commands.pipeline(transaction=False) as pipe:
                pipe.xlen(key)
                pipe.xrevrange(key, count=last)
                count, entries = await pipe.execute()
        except ResponseError as exc:  # WRONGTYPE: not a stream
            log.warning("dead letters of %s unreadable: %r", env, exc)
            return {"count": 0, "recent": [], "error": str(exc)}
        recent = []
        for entry_id, fields in entries:
            original: Any = None
            with contextlib.suppress(TypeError, ValueError):
                original = json.loads(fields.get("fields") or "null")
            if not isinstance(original, dict):
                original = {}
            recent.append(
                {
                    "id": entry_id,
                    "entry": fields.get("entry"),
                    "reason": fields.get("reason"),
                    "instance": fields.get("instance"),
                    "at": fields.get("at"),
                    "action": original.get("action"),
                    "app": original.get("app"),
                }
            )
        return {"count": count, "recent": recent}

    async def remove(self, name: str) -> None:
        """Delete what Redis and the registry hold of environment ``name``: its hash,
        its set and zset entries, its instances' keys, command and dead-letter streams,
        its status fields in every app's status hash, and its registry row. A worker
        still running registers again with its next heartbeat."""
        prefix = self.keys.prefix
        try:
            for redis in {id(self.redis): self.redis, id(self.commands): self.commands}.values():
                doomed = [self.keys.env(name)]
                for pattern in (f"{prefix}:env:{name}:*", f"{prefix}:reclaim:{name}:*"):
                    doomed += [key async for key in redis.scan_iter(match=pattern, count=500)]
                await redis.unlink(*doomed)
            await self.redis.srem(self.keys.envs, name)
            members = await self.redis.zrange(self.keys.instances, 0, -1)
            mine = [m for m in members if isinstance(m, str) and m.startswith(f"{name}/")]
            if mine:
                await self.redis.zrem(self.keys.instances, *mine)
            async for key in self.redis.scan_iter(match=f"{prefix}:status:*", count=500):
                with contextlib.suppress(ResponseError):  # not a hash: repaired elsewhere
                    fields = await self.redis.hkeys(key)
                    gone = [f for f in fields if isinstance(f, str) and f.startswith(f"{name}/")]
                    if gone:
                        await self.redis.hdel(key, *gone)
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer: {exc}") from exc
        await self.store.delete(name)
        self.snapshot.pop(name, None)
        log.info("environment %s removed", name)

    def is_online(self, name: str) -> bool:
        env = self.snapshot.get(name)
        return env is not None and env["status"] == "online"

    async def refresh(self) -> dict[str, dict[str, Any]]:
        """Read every environment from Redis (and the store), notice changes."""
        try:
            envs = await self._read()
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer: {exc}") from exc
        previous, self.snapshot = self.snapshot, envs
        for name, env in envs.items():
            old = previous.get(name)
            if (
                old is None
                or old["status"] != env["status"]
                or old["instances"] != env["instances"]
                or old["databases"] != env["databases"]
            ):
                self._changed(env, old)
            if old is not None and old["status"] == "online" and env["status"] == "offline":
                for listener in self.offline_listeners:
                    listener(name)
        return envs

    async def _discard(self, key: str, why: str) -> None:
        """Remove a key that holds what nocosup never writes there (logged)."""
        log.warning("removing %s from Redis: %s", key, why)
        await self.redis.unlink(key)

    async def _names(self) -> set[str]:
        try:
            members = await self.redis.smembers(self.keys.envs)
        except ResponseError as exc:
            await self._discard(self.keys.envs, f"not a set ({exc})")
            return set()
        names = set()
        for m in members:
            if isinstance(m, str) and NAME.fullmatch(m):
                names.add(m)
            else:
                log.warning("removing invalid environment name %.80r from %s", m, self.keys.envs)
                await self.redis.srem(self.keys.envs, m)
        return names

    async def _last_seen(self) -> dict[str, float]:
        """Latest heartbeat (ms) per environment from the instances zset; invalid members
        and scores (not finite, negative, more than a day ahead) are removed."""
        try:
            # decoded members (redisconn), float scores
            scored = cast(
                "list[tuple[str, float]]",
                await self.redis.zrange(self.keys.instances, 0, -1, withscores=True),
            )
        except ResponseError as exc:
            await self._discard(self.keys.instances, f"not a sorted set ({exc})")
            return {}
        horizon = (time.time() + 86_400) * 1000
        last_seen: dict[str, float] = {}
        for m, score in scored:
            if not valid_member(m) or not (0 <= score <= horizon):  # NaN and inf fail too
                log.warning(
                    "removing %.80r (score %r) from %s: not a heartbeat",
                    m,
                    score,
                    self.keys.instances,
                )
                await self.redis.zrem(self.keys.instances, m)
                continue
            env, _ = split_member(m)
            last_seen[env] = max(last_seen.get(env, 0), score)
        return last_seen

    async def _infos(self, names: Sequence[str]) -> builtins.list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.env(name))
            results = await pipe.execute(raise_on_error=False)
        infos: builtins.list[dict[str, str]] = []
        for name, result in zip(names, results, strict=True):
            info: dict[str, str] = {} if isinstance(result, Exception) else result
            if isinstance(result, ResponseError):
                await self._discard(self.keys.env(name), f"not a hash ({result})")
            elif isinstance(result, Exception):
                raise result
            kept = {k: v for k, v in info.items() if isinstance(v, str) and len(v) <= 2048}
            kept = self._verified(name, kept)
            for k in ("url", "proxy_url"):
                if kept.get(k) and not _http_url(kept[k]):
                    log.warning("ignoring %s %.80r of environment %s", k, kept.pop(k), name)
            infos.append(kept)
        return infos

    def _verified(self, name: str, info: dict[str, str]) -> dict[str, str]:
        """The registration of ``name`` when its signature holds and is at most a heartbeat
        TTL old; else only ``registered_at`` (unsigned, informational), so the URLs last
        stored in the database serve (a stale one is an environment gone offline)."""
        if not info:
            return info
        registered = {k: v for k, v in info.items() if k == "registered_at"}
        signed = {k: v for k, v in info.items() if k != "registered_at"}
        try:
            return {
                **self.signer.verify("environment", name, signed, self.ttl + MAX_SKEW),
                **registered,
            }
        except BadSignature as exc:
            _dropped.warning(
                f"environment:{name}", "ignoring the registration of %s in Redis: %s", name, exc
            )
            return registered

    async def _read(self) -> dict[str, dict[str, Any]]:
        stored = await self.store.list()
        names = await self._names() | set(stored)
        ordered = sorted(names)
        infos = await self._infos(ordered)
        last_seen = await self._last_seen()
        live = await live_instances(self.redis, self.keys, None, self.ttl, self.signer)
        out = {}
        for name, info in zip(ordered, infos, strict=True):
            row = stored.get(name, {})
            instances = sorted(split_member(m)[1] for m in live if split_member(m)[0] == name)
            out[name] = {
                "name": name,
                "url": info.get("url") or row.get("url") or None,
                "proxy_url": info.get("proxy_url") or row.get("proxy_url") or None,
                "version": info.get("version") or row.get("version") or None,
                "status": "online" if instances else "offline",
                "instances": instances,
                "last_heartbeat_at": _iso_ms(last_seen.get(name)) or row.get("last_seen_at"),
                "registered_at": info.get("registered_at") or row.get("registered_at"),
                "databases": _databases(info.get("databases")) or _databases(row.get("databases")),
            }
        return out

    def _changed(self, env: dict[str, Any], old: dict[str, Any] | None) -> None:
        if env["status"] == "online":
            self.host.spawn(self.store.upsert(env))
        if old is not None or env["status"] == "online":
            log.info(
                "environment %s is %s (%d instances)",
                env["name"],
                env["status"],
                len(env["instances"]),
            )
            self.host.environment_changed(env)


class RemoteProcess(ProcessAdapter):
    """Apps run on worker environments; every operation is a command awaited per env."""

    can_move = True

    def __init__(
        self,
        host: Host,
        redis: Redis,
        keys: Keys,
        cache: AppCache,
        sender: CommandSender,
        environments: RedisEnvironments,
    ) -> None:
        self.host = host
        self.settings = host.settings
        self.redis = redis
        self.keys = keys
        self.cache = cache
        self.sender = sender
        self.environments = environments
        #: Every registered app, for the proxy's hot path.
        self.records: dict[str, AppRecord] = {}

    async def restore(self, records: list[AppRecord]) -> None:
        """Learn every app; rebuild the config cache only when it differs from the
        registry (a supervisor replica starting beside others must not overwrite a write
        another made since it read the registry)."""
        self.records = {r.name: r for r in records}
        problem = await self.cache.problem(full=True)
        if problem is None:
            problem = _cache_drift(self.records, await self.cache.all())
        if problem is not None:
            log.info("config cache rebuilt from the registry at start (%s)", problem)
            await self.cache.rebuild(records)

    async def _learn(self, record: AppRecord) -> None:
        """Keep ``record`` for the proxy and in the Redis cache (written only if changed)."""
        known = self.records.get(record.name)
        try:
            if known is None or (known.version, known.created_at) != (
                record.version,
                record.created_at,
            ):
                try:
                    await self.cache.put(record)
                except ResponseError as exc:  # the cache is not what nocosup wrote: repaired
                    log.warning(
                        "config cache write of %s failed, left to repair: %r", record.name, exc
                    )
        finally:
            # the cache first: a request routed by the new record (a moved app's new
            # environment) finds it there when the worker looks the app up
            self.records[record.name] = record

    async def create(self, record: AppRecord) -> None:
        await self._learn(record)
        for env in record.environments:
            result = await self._command(env, "create", record)
            if not result.ok:
                raise failure_type([result])(
                    f"environment {env!r} could not create {record.name!r}: "
                    f"{result.error or result.status}",
                    environment=env,
                )

    async def update(self, record: AppRecord) -> None:
        await self._learn(record)
        results = await asyncio.gather(
            *(
                self._command(env, "update", record, timeout=min(self.settings.command_timeout, 10))
                for env in record.environments
            )
        )
        for r in results:
            if not r.ok and r.status != AppStatus.UNAVAILABLE.value:
                log.warning(
                    "environment %s did not take the new config of %s: %s",
                    r.environment,
                    record.name,
                    r.error,
                )

    async def start(self, record: AppRecord) -> list[EnvResult]:
        """One environment after another: boots may write initial data to a shared DB."""
        await self._learn(record)
        return [await self._command(env, "start", record) for env in record.environments]

    async def stop(self, record: AppRecord) -> list[EnvResult]:
        await self._learn(record)
        return list(
            await asyncio.gather(
                *(self._command(env, "stop", record) for env in record.environments)
            )
        )

    async def run_command(
        self, record: AppRecord, command: str, args: dict[str, Any]
    ) -> list[EnvResult]:
        """One environment after another, as a start: a migration runs once per database
        before the next environment (sharing it) finds nothing left to do."""
        await self._learn(record)
        body = {"command": command, "args": args}
        return [await self._command(env, "run", record, body) for env in record.environments]

    async def remove(self, record: AppRecord, drop_database: bool) -> list[EnvResult]:
        results = list(
            await asyncio.gather(
                *(
                    self._command(env, "remove", record, {"drop_database": drop_database})
                    for env in record.environments
                )
            )
        )
        if all(r.ok for r in results):
            await self.forget(record)
        return results

    async def leave(self, record: AppRecord, environments: list[str]) -> list[EnvResult]:
        """A ``remove`` without dropping the database, to each of ``environments``."""
        return list(
            await asyncio.gather(
                *(
                    self._command(env, "remove", record, {"drop_database": False})
                    for env in environments
                )
            )
        )

    async def forget(self, record: AppRecord) -> None:
        self.records.pop(record.name, None)
        try:
            await self.cache.remove(record.name)
        except ResponseError as exc:
            log.warning("config cache removal of %s failed, left to repair: %r", record.name, exc)
        await self.redis.delete(self.keys.status(record.name), self.keys.seen(record.name))

    async def _command(
        self,
        env: str,
        action: str,
        record: AppRecord,
        args: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> EnvResult:
        command = Command(action, record.name, record.to_json(), args or {})
        wait = self.settings.command_timeout if timeout is None else timeout
        began = time.perf_counter()
        try:
            replies = await self.sender.send(env, command, wait)
            self.host.metrics.command(env, action, time.perf_counter() - began)
        except CommandTimeout as exc:
            return EnvResult(env, False, "timeout", exc.message, timed_out=True)
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer: {exc}") from exc
        if not replies:
            return EnvResult(
                env, False, AppStatus.UNAVAILABLE.value, f"environment {env!r} is offline"
            )
        return _combine(env, replies)

    async def statuses(self, records: list[AppRecord]) -> dict[str, dict[str, dict[str, Any]]]:
        if not records:
            return {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r in records:
                    pipe.hgetall(self.keys.status(r.name))
                    pipe.hgetall(self.keys.seen(r.name))
                both = await pipe.execute(raise_on_error=False)
            raw, seen = both[0::2], [latest_by_environment(f) for f in both[1::2]]
            envs = self.environments
            live = await live_instances(self.redis, self.keys, None, envs.ttl, envs.signer)
            raw = [
                await self._checked_statuses(r, f, live) for r, f in zip(records, raw, strict=True)
            ]
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer: {exc}") from exc
        online = {split_member(m)[0] for m in live}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for record, fields, last_seen in zip(records, raw, seen, strict=True):
            per_env: dict[str, list[dict[str, Any]]] = {}
            for field, report in fields.items():
                if field in live:
                    per_env.setdefault(split_member(field)[0], []).append(report)
            out[record.name] = {}
            for env in record.environments:
                if env not in online:
                    out[record.name][env] = {
                        "status": AppStatus.UNAVAILABLE.value,
                        "error": f"environment {env!r} is offline",
                        "last_seen_at": last_seen.get(env),
                    }
                    continue
                reports = per_env.get(env, [])
                errors = sorted({r["error"] for r in reports if r.get("error")})
                out[record.name][env] = {
                    "status": aggregate([r["status"] for r in reports]),
                    "error": "; ".join(errors) or None,
                    "last_seen_at": last_seen.get(env),
                }
        return out

    async def _checked_statuses(
        self, record: AppRecord, fields: Any, live: set[str]
    ) -> dict[str, dict[str, Any]]:
        """The readable status reports of ``record`` by ``{env}/{instance}``. An unreadable
        field (or a status key that is not a hash) is logged and removed, and the live
        instances it concerns are asked to write their statuses again (``resync``)."""
        key = self.keys.status(record.name)
        if isinstance(fields, ResponseError):
            log.warning("removing %s: not a hash (%s)", key, fields)
            await self.redis.unlink(key)
            await self._resync(m for m in live if split_member(m)[0] in record.environments)
            return {}
        if isinstance(fields, Exception):
            raise fields
        out: dict[str, dict[str, Any]] = {}
        bad: list[str] = []
        for field, value in fields.items():
            report = parse_status(
                value, self.environments.signer, status_context(record.name, str(field))
            )
            if report is None or not valid_member(field):
                bad.append(field)
            else:
                out[field] = report
        if bad:
            log.warning("removing unreadable status fields %.200r of %s", bad, key)
            await self.redis.hdel(key, *bad)
            await self._resync(m for m in bad if m in live)
        return out

    async def _resync(self, members: Iterable[str]) -> None:
        """Ask these instances to write every status of theirs again (next heartbeat)."""
        for m in members:
            await self.redis.set(self.keys.resync(*split_member(m)), "1", ex=60)


def _combine(env: str, replies: list[Reply]) -> EnvResult:
    ok = all(r.ok for r in replies)
    errors = [f"{r.instance}: {r.error}" for r in replies if r.error]
    return EnvResult(env, ok, aggregate([r.status for r in replies]), "; ".join(errors) or None)


class ProxyGateway:
    """Serves ``/apps/{name}/...`` on the supervisor by proxying to the app's environment.

    The target is always the ``proxy_url`` an environment registered, never anything
    taken from the request. A caller may pick one of the app's environments with the
    ``X-Nocosup-Environment`` header or the ``__env`` query parameter; otherwise the
    first online one (or a ``select_environment`` plugin's choice) serves. When that
    environment did not take the request (it refused the connection or answered 503
    ``SHUTTING_DOWN``: a rolling restart) and the request can be replayed, the proxy
    sends it once more to the app's next online environment; never after an explicit
    choice.
    """

    #: Host.fast_route may dispatch to it below ASGI (nocosup.fastpath).
    fast_path = True

    def __init__(
        self, host: Host, process: RemoteProcess, environments: RedisEnvironments, proxy: Any
    ) -> None:
        self.host = host
        self.process = process
        self.environments = environments
        self.proxy = proxy
        #: Requests in flight per environment: answered 503 at once when it goes offline.
        self.inflight = InFlight()
        environments.offline_listeners.append(self.inflight.abort)
        self.policy = UpstreamPolicy(host.settings.allowed_upstreams)

    def _upstream(self, env: str) -> str | None:
        info = self.environments.snapshot.get(env) or {}
        return info.get("proxy_url") or info.get("url")

    def _refusal(self, env: str) -> str | None:
        """Why ``env`` may not be proxied to (its URL is outside the allow-list), logged."""
        url = self._upstream(env)
        why = self.policy.refusal(url) if url else None
        if why is not None:
            _dropped.warning(
                f"upstream:{env}", "not routing to environment %s (%.200s): %s", env, url, why
            )
        return why

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            record = self.process.records.get(name)
            if record is None:
                raise AppNotFound(name)
            if record.desired_state == "stopped":
                raise AppStopped(name)
            env = self._choose(record, scope)
            scope[PROXIED_TO] = env  # the request is counted for that environment
            upstream = self._upstream(env)
            if not upstream:
                raise EnvironmentUnavailable(f"environment {env!r} registered no URL")
        except NocosupError as exc:
            await send_error(scope, receive, send, exc)
            return

        def refused() -> NocosupError:
            # a worker shutting down (or restarting) closed its socket: retry shortly
            return EnvironmentUnavailable(
                f"environment {env!r} is not accepting connections (shutting down or "
                "restarting); retry shortly"
            )

        fallback: Callable[[], str | None] | None = None
        rescue: Callable[[], Rescue | None] | None = None
        if len(record.environments) > 1:
            first = env

            def fallback() -> str | None:
                # the first environment never took the request (restarting, draining)
                nonlocal env
                other = self._fallback(record, env, scope)
                if other is not None:
                    self.inflight.move(env, other[0])
                    env = scope[PROXIED_TO] = other[0]
                    return other[1]
                return None

            def rescue() -> Rescue | None:
                # the first environment went offline before answering: a request without
                # a body goes once to the next one (its worker restarted or froze)
                nonlocal env
                if env != first or not _bodiless(scope):
                    return None
                other = self._fallback(record, env, scope)
                if other is None:
                    return None
                env = scope[PROXIED_TO] = other[0]
                url = other[1]

                async def again(tracked: Send) -> None:
                    await self.proxy.forward(url, scope, receive, tracked, refused=refused)

                return env, again

        async def exchange(tracked: Send) -> None:
            await self.proxy.forward(
                upstream, scope, receive, tracked, refused=refused, fallback=fallback
            )

        await self.inflight.serve(env, scope, receive, send, exchange, rescue)

    def express_plan(self, name: str, scope: Scope) -> tuple[str, str] | None:
        """(environment, its URL) for a request of app ``name`` that :meth:`handle` would
        forward there, chosen without awaiting anything; None when :meth:`handle` would
        answer an error instead (it then answers it)."""
        record = self.process.records.get(name)
        if record is None or record.desired_state == "stopped":
            return None
        try:
            env = self._choose(record, scope)
        except NocosupError:
            return None
        url = self._upstream(env)
        return (env, url) if url else None

    def plan_stamp(self, name: str, env: str) -> tuple[Any, ...] | None:
        """What :meth:`express_plan`'s choice of ``env`` for app ``name`` rested on, for a
        caller that sends the same request the same way while :meth:`stamp_holds`; None
        when the same request may be sent elsewhere next time (a select_environment
        plugin choosing among several environments)."""
        record = self.process.records.get(name)
        if record is None or (
            len(record.environments) > 1 and self.host.hooks.has_select_environment()
        ):
            return None
        snapshot = self.environments.snapshot
        return record, snapshot, snapshot.get(env)

    def stamp_holds(self, name: str, env: str, stamp: tuple[Any, ...]) -> bool:
        """Whether the app's record and the environments are those of ``stamp`` and ``env``
        is still online. A record is replaced when it changes and the snapshot by every
        refresh; removing an environment changes the snapshot in place, which the check of
        ``env``'s own entry sees (removing another cannot change the choice)."""
        record, snapshot, info = stamp
        now = self.environments.snapshot
        return (
            now is snapshot
            and info is not None
            and now.get(env) is info
            and info["status"] == "online"
            and self.process.records.get(name) is record
        )

    def _fallback(self, record: AppRecord, failed: str, scope: Scope) -> tuple[str, str] | None:
        """The environment (and its URL) to send a request again to when ``failed`` did not
        take it: the next online one of the app after ``failed``. None when the caller
        chose ``failed`` explicitly, or when no other environment is online and routable."""
        if _requested_environment(scope) is not None:
            return None
        envs = record.environments
        start = envs.index(failed) + 1 if failed in envs else 0
        for env in (*envs[start:], *envs[:start]):
            if env == failed or not self.environments.is_online(env):
                continue
            if self.policy.restricted and self._refusal(env) is not None:
                continue
            url = self._upstream(env)
            if url:
                log.info(
                    "environment %s did not take a request for %s: trying %s",
                    failed,
                    record.name,
                    env,
                )
                return env, url
        return None

    def _choose(self, record: AppRecord, scope: Scope) -> str:
        wanted = _requested_environment(scope)
        if wanted is not None:
            if wanted not in record.environments:
                raise EnvironmentNotFound(
                    f"application {record.name!r} is not deployed to environment {wanted!r}; "
                    f"it runs on {', '.join(record.environments)}"
                )
            if not self.environments.is_online(wanted):
                raise EnvironmentUnavailable(
                    f"deployment environment {wanted!r} of application {record.name!r} "
                    "is unavailable"
                )
            why = self._refusal(wanted) if self.policy.restricted else None
            if why is not None:
                raise UpstreamNotAllowed(f"environment {wanted!r} is not routed to: {why}")
            return wanted
        online = [e for e in record.environments if self.environments.is_online(e)]
        if self.policy.restricted and online:
            refused = {e: why for e in online if (why := self._refusal(e)) is not None}
            online = [e for e in online if e not in refused]
            if not online:
                raise UpstreamNotAllowed(
                    f"no environment of application {record.name!r} may be proxied to: "
                    + "; ".join(f"{e}: {why}" for e, why in refused.items())
                )
        if not online:
            raise EnvironmentUnavailable(
                f"deployment environment for application {record.name!r} is unavailable "
                f"({', '.join(record.environments)} offline)"
            )
        if len(online) > 1 and self.host.hooks.has_select_environment():
            picked = self.host.hooks.select_environment(
                app=AppContext(record, None, self.host.settings.instance_id, self.host),
                environments=[self.environments.snapshot[e] for e in online],
                scope=scope,
            )
            if picked in online:
                return picked
        return online[0]


def _bodiless(scope: Scope) -> bool:
    """Whether the request announced no body (so it can be sent again as it is)."""
    return not any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])


def _requested_environment(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"x-nocosup-environment":
            return cast(bytes, value).decode("latin-1").strip()
    qs: bytes = scope.get("query_string", b"")
    if b"__env=" in qs:
        for key, value in parse_qsl(qs.decode("latin-1")):
            if key == "__env":
                return value
    return None


def _cache_drift(records: dict[str, AppRecord], cached: list[AppRecord]) -> str | None:
    """How the config cache differs from the registry's records (versions included: a
    replica's rebuild may have raced another's write), or None."""
    versions = {r.name: r.version for r in cached}
    missing = sorted(set(records) - set(versions))
    if missing:
        return f"{len(missing)} registered apps missing ({', '.join(missing[:5])})"
    stale = sorted(n for n, r in records.items() if versions[n] != r.version)
    if stale:
        return f"{len(stale)} records at another version ({', '.join(stale[:5])})"
    extra = sorted(set(versions) - set(records))
    if extra:
        return f"{len(extra)} apps the registry does not hold ({', '.join(extra[:5])})"
    return None


class Watcher:
    """Background upkeep of a supervisor in multi-environment mode."""

    def __init__(
        self,
        host: Host,
        redis: Redis,
        keys: Keys,
        registry: Registry,
        environments: RedisEnvironments,
        process: RemoteProcess,
    ) -> None:
        self.host = host
        self.redis = redis
        self.keys = keys
        self.registry = registry
        self.environments = environments
        self.process = process
        self.period = min(1.0, host.settings.heartbeat_interval / 2)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: A worker reported an unreadable cache entry: parse every record next round.
        self._verify_cache = False
        #: Set when supervisors may run as replicas: the table sync and the upkeep lease.
        self.replicas: Replicas | None = None
        #: The supervisor whose failover and sweep of strays run here (under the lease).
        self.supervisor: Supervisor | None = None
        self._failover: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.environments.refresh()
        self._tasks = [
            asyncio.create_task(self._loop(), name="watcher"),
            asyncio.create_task(self._listen(), name="watcher-events"),
        ]

    async def close(self) -> None:
        if self._failover is not None:
            self._tasks.append(self._failover)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def check_cache(self, full: bool = False) -> None:
        """Rebuild the config cache from the registry when any part of it is missing or
        invalid (``full``: every record parsed, every registered app present)."""
        cache = self.process.cache
        problem = await cache.problem(full)
        if problem is None and full:
            problem = _cache_drift(self.process.records, await cache.all())
        if problem is not None:
            log.warning("config cache unsound (%s): rebuilding it from the registry", problem)
            await cache.rebuild(await self.registry.list())

    async def _loop(self) -> None:
        last_sweep = last_verify = time.monotonic()
        last_strays = 0.0  # the first round this replica leads looks for strays
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.period)
            self._wake.clear()
            try:
                await self.environments.refresh()
                if self.replicas is not None:
                    await self.replicas.check()
                    if not await self.replicas.lead():
                        continue  # another replica does the upkeep
                full, self._verify_cache = self._verify_cache, False
                if time.monotonic() - last_verify > FULL_CHECK_EVERY:
                    full = True
                await self.check_cache(full)
                if full:
                    last_verify = time.monotonic()
                if time.monotonic() - last_sweep > 60:
                    last_sweep = time.monotonic()
                    await self.sweep()
                self._start_failover()
                if time.monotonic() - last_strays > FULL_CHECK_EVERY:
                    last_strays = time.monotonic()
                    await self.sweep_strays()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("watcher round failed, retrying: %r", exc)

    def _start_failover(self) -> None:
        """Look for apps to fail over, in a task of its own (a move waits for a boot, and
        the lease must be renewed meanwhile); one such task at a time."""
        supervisor = self.supervisor
        if supervisor is None or (self._failover is not None and not self._failover.done()):
            return
        snapshot = dict(self.environments.snapshot)
        self._failover = asyncio.create_task(self._run_failover(supervisor, snapshot))

    async def _run_failover(
        self, supervisor: Supervisor, snapshot: dict[str, dict[str, Any]]
    ) -> None:
        try:
            await supervisor.failover(snapshot)
        except Exception as exc:
            raise_if_cancelled()
            log.warning("failover round failed, retrying: %r", exc)

    async def sweep_strays(self) -> None:
        """Find apps reported by live instances of environments the registry does not place
        them on, and have the supervisor remove them there."""
        if self.supervisor is None:
            return
        names = list(self.process.records)
        envs = self.environments
        live = await live_instances(self.redis, self.keys, None, envs.ttl, envs.signer)
        found: dict[str, set[str]] = {}
        for i in range(0, len(names), 500):
            batch = names[i : i + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hkeys(self.keys.status(name))
                fields = await pipe.execute(raise_on_error=False)
            for name, members in zip(batch, fields, strict=True):
                if isinstance(members, list):
                    found[name] = {m for m in members if isinstance(m, str) and valid_member(m)}
        await self.supervisor.sweep_strays(live, found)

    async def _listen(self) -> None:
        """Relay workers' hints: status reports to hooks and SSE, environment changes."""
        while True:
            try:
                async for data in subscribed(self.redis, self.keys.events):
                    raise_if_cancelled()
                    self._relay(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("event subscription dropped, re-subscribing: %r", exc)
                await asyncio.sleep(0.5)

    def _relay(self, data: Any) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if not isinstance(event, dict):
            return
        try:
            event = self.environments.signer.verify_json(
                "event", "", event, self.environments.ttl + MAX_SKEW
            )
        except BadSignature as exc:
            _dropped.warning("event", "ignoring an event that does not verify: %s", exc)
            return
        if event.get("type") == "environment":
            self._wake.set()
        elif event.get("type") == "cache_invalid":
            # only a hint: the next round checks the cache itself (at most once a round)
            self._verify_cache = True
            self._wake.set()
        elif event.get("type") == "registry" and self.replicas is not None:
            self.host.spawn(self.replicas.on_hint(event))
        elif event.get("type") == "app_status":
            app = self._status_report(event)
            if app is not None:
                self.host.status_changed(*app)

    def _status_report(
        self, event: dict[str, Any]
    ) -> tuple[AppContext, AppStatus, str | None] | None:
        """A worker's status report as (app in its environment, status, error), or None
        (logged) when it is malformed or about an app the registry does not hold."""
        name, env, instance, error = (
            event.get(k) for k in ("app", "environment", "instance", "error")
        )
        record = self.process.records.get(name) if isinstance(name, str) else None
        if record is None:
            return None
        try:
            status = AppStatus(event.get("status", ""))
        except ValueError:
            status = None
        if (
            status is None
            or not all(isinstance(x, str) for x in (env, instance))
            or not (error is None or isinstance(error, str))
        ):
            log.warning("ignoring a malformed status report: %.200r", event)
            return None
        return AppContext(record, str(env), str(instance), self.host), status, error

    async def sweep(self) -> None:
        """Forget instances silent for long: their zset entry, status fields, group."""
        ttl = self.environments.ttl
        cutoff = (time.time() - max(10 * ttl, 300)) * 1000
        stale = await self.redis.zrangebyscore(self.keys.instances, "-inf", cutoff)
        if not stale:
            return
        names = list(self.process.records)
        for m in stale:
            assert isinstance(m, str)  # decoded (redisconn), and no scores were asked for
            if not valid_member(m):
                await self.redis.zrem(self.keys.instances, m)
                continue
            env, instance = split_member(m)
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hdel(self.keys.status(name), m)
                pipe.zrem(self.keys.instances, m)
                await pipe.execute()
            with contextlib.suppress(RedisError):
                pending = await self.redis.xpending(self.keys.commands(env), instance)
                if not pending or not pending.get("pending"):
                    await self.redis.xgroup_destroy(self.keys.commands(env), instance)
            log.info("swept instance %s of %s (silent since before the cutoff)", instance, env)
