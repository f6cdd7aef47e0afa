"""Redis clients: one way to open them, so every part gets the same timeouts and checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from nocosup.errors import ConfigError
from nocosup.redisurl import (
    SentinelTarget,
    is_sentinel_url,
    mask_url,
    parse_sentinel_url,
    through_sentinels,
)

if TYPE_CHECKING:
    from nocosup.config import Settings
    from nocosup.host import Host


#: Seconds a Redis call may wait for its answer. A master that froze or sits behind a
#: partition keeps its sockets open and silent, and TCP alone would wait for many
#: minutes: with a deadline the call fails, the connection is dropped, and the next one
#: (through Sentinel: to the master it promoted meanwhile) is fresh. It must exceed the
#: longest blocking read (``XREAD``/``XREADGROUP`` block for ``commands.BLOCK_MS``, 2 s)
#: and stay well under a heartbeat TTL, so a worker renews its key on the new master in
#: time. A subscription has its own deadline (:func:`subscribed`).
SOCKET_TIMEOUT = 5.0

#: A subscription silent this long is asked for a PING; no answer within
#: :data:`SOCKET_TIMEOUT` after that, and it is given up (see :func:`subscribed`).
SUBSCRIPTION_IDLE = 5.0

#: Options of every client nocosup opens.
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "health_check_interval": 15,
    "socket_connect_timeout": 5,
    "socket_timeout": SOCKET_TIMEOUT,
    # redis-py then retries a call that timed out or met a closed connection, on a new
    # connection (after a Redis restart every pooled one is stale; without this flag the
    # first call on each fails). A timed-out XADD may so land twice: the sender takes the
    # first reply to its request id, and a worker's actions are idempotent (a second stop
    # finds the app stopped, a second remove finds nothing to remove).
    "retry_on_timeout": True,
}


async def connect_redis(
    url: str, variable: str, settings: Settings | None = None
) -> aioredis.Redis:
    """A client for ``url`` that has answered a PING (else ConfigError naming ``variable``).

    Strings come back decoded. AUTH comes from the URL (``redis://user:password@host``, an
    ACL user, or ``redis://:password@host``); a ``rediss://`` URL speaks TLS, verified
    against NOCOSUP_REDIS_CA_FILE or the URL's ``ssl_ca_certs`` query parameter, else the
    system's CAs. The password never appears in a message. A Sentinel address
    (``redis+sentinel://``, or any URL when ``settings`` names sentinels) gives a client
    that asks the sentinels where the master is on every new connection, so it follows a
    failover by reconnecting.
    """
    target = sentinel_target(url, variable, settings)
    try:
        if target is None:
            tls = url.lower().startswith("rediss://")
            client = aioredis.from_url(url, **_CLIENT_OPTIONS, **_ca_option(tls, settings))
        else:
            client = _sentinel_client(target, settings)
    except ValueError as exc:
        raise ConfigError(f"{variable}: invalid Redis URL {mask_url(url)}: {exc}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise ConfigError(f"{variable}: cannot reach Redis at {mask_url(url)}: {exc}") from exc
    return client


def sentinel_target(url: str, variable: str, settings: Settings | None) -> SentinelTarget | None:
    """How ``url`` is reached through Sentinel, or None for a direct connection."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url, variable)
    if settings is not None and settings.redis_sentinel_master is not None:
        return through_sentinels(
            url, settings.redis_sentinels, settings.redis_sentinel_master, variable
        )
    return None


def _sentinel_client(target: SentinelTarget, settings: Settings | None) -> aioredis.Redis:
    sentinel_options: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 5}
    if settings is not None and settings.redis_sentinel_password:
        sentinel_options["password"] = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=sentinel_options,
        username=target.username,
        password=target.password,
        db=target.db,
        ssl=target.ssl,
        **_ca_option(target.ssl, settings),
        **_CLIENT_OPTIONS,
    )
    client: aioredis.Redis = sentinel.master_for(target.service, redis_class=_SentinelRedis)
    return client


def _ca_option(tls: bool, settings: Settings | None) -> dict[str, Any]:
    """NOCOSUP_REDIS_CA_FILE for a TLS connection (else the system's CAs)."""
    if tls and settings is not None and settings.redis_ca_file:
        return {"ssl_ca_certs": settings.redis_ca_file}
    return {}


class _SentinelRedis(aioredis.Redis):
    """A client of a Sentinel-managed master that also closes its sentinel connections."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


async def connect_role_redis(host: Host) -> tuple[aioredis.Redis, aioredis.Redis]:
    """(config cache and heartbeats, command streams): one client when both URLs agree.

    /readyz pings the first. Close them with :func:`close_role_redis`.
    """
    settings = host.settings
    assert settings.supervisor_redis_url and settings.redis_command_url
    redis = await connect_redis(settings.supervisor_redis_url, "APP_SUPERVISOR_REDIS_URL", settings)
    host.readiness["redis"] = redis.ping
    # a Redis blip is "degraded" for a heartbeat TTL (3 intervals), then "unavailable"
    host.readiness_grace["redis"] = 3 * settings.heartbeat_interval
    if settings.redis_command_url == settings.supervisor_redis_url:
        return redis, redis
    try:
        commands = await connect_redis(
            settings.redis_command_url, "APP_COMMAND_REDIS_URL", settings
        )
    except BaseException:
        await redis.aclose()
        raise
    return redis, commands


async def close_role_redis(*clients: aioredis.Redis | None) -> None:
    """Close each distinct client once (the two role clients may be one)."""
    seen: set[int] = set()
    for client in clients:
        if client is not None and id(client) not in seen:
            seen.add(id(client))
            await client.aclose()


def raise_if_cancelled() -> None:
    """Re-raise a cancellation a client library swallowed: redis-py, cancelled in a
    blocking read, may retry the command (or raise another error) instead of letting the
    CancelledError through. A loop that goes on must check, or its task never stops
    (seen: 1 run in 15 hung in CommandConsumer.run's XREADGROUP after task.cancel())."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def subscribed(redis: aioredis.Redis, channel: str) -> AsyncIterator[Any]:
    """The data of each message published on ``channel``, as long as the connection lives.

    A subscription waits without a deadline (its reads block until something is
    published), so a master that froze would hold it forever. When nothing arrived for
    :data:`SUBSCRIPTION_IDLE` seconds it sends a PING, and raises ``TimeoutError`` when
    the answer does not come within :data:`SOCKET_TIMEOUT`: the caller subscribes again,
    on a new connection (through Sentinel, to the current master).
    """
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    loop = asyncio.get_running_loop()
    try:
        await pubsub.subscribe(channel)
        heard = loop.time()
        pinged: float | None = None
        while True:
            # get_message() in two steps: its parsing turns the "PONG" a RESP3
            # subscription answers into nothing, and any answer at all is a sign of life
            response = await pubsub.parse_response(block=False, timeout=1.0)
            now = loop.time()
            if response is not None:
                heard, pinged = now, None
                message = await pubsub.handle_message(  # type: ignore[no-untyped-call]
                    response, ignore_subscribe_messages=True
                )
                if message is not None and message.get("type") == "message":
                    yield message.get("data")
            elif pinged is not None:
                if now - pinged > SOCKET_TIMEOUT:
                    # the idle connections of the pool may all lead to that master: the
                    # next subscription (and every call) must start on a fresh one
                    await redis.connection_pool.disconnect(inuse_connections=False)
                    raise TimeoutError(f"no answer to a PING on {channel} in {SOCKET_TIMEOUT:g} s")
            elif now - heard > SUBSCRIPTION_IDLE:
                await pubsub.ping()
                pinged = now
    finally:
        with contextlib.suppress(Exception):
            # redis-py leaves PubSub.aclose unannotated
            await pubsub.aclose()  # type: ignore[no-untyped-call]
