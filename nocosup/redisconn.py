"""Redis clients: one way to open them, so every part gets the same timeouts and checks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nocosup.config import mask_url
from nocosup.errors import ConfigError

if TYPE_CHECKING:
    from nocosup.host import Host


async def connect_redis(url: str, variable: str, ca_file: str | None = None) -> aioredis.Redis:
    """A client for ``url`` that has answered a PING (else ConfigError naming ``variable``).

    Strings come back decoded. ``socket_timeout`` is None (redis-py 8 defaults to 5 s,
    which wraps every call in a timeout task): command streams block in XREAD for seconds,
    and health checks catch dead connections instead. AUTH comes from the URL
    (``redis://user:password@host``, an ACL user, or ``redis://:password@host``); a
    ``rediss://`` URL speaks TLS, verified against ``ca_file`` (NOCOSUP_REDIS_CA_FILE) or
    the URL's ``ssl_ca_certs`` query parameter, else the system's CAs. The password never
    appears in a message.
    """
    options: dict[str, object] = {}
    if ca_file and url.lower().startswith("rediss://"):
        options["ssl_ca_certs"] = ca_file
    try:
        client = aioredis.from_url(
            url,
            decode_responses=True,
            health_check_interval=15,
            socket_connect_timeout=5,
            socket_timeout=None,
            retry_on_timeout=True,
            **options,
        )
    except ValueError as exc:
        raise ConfigError(f"{variable}: invalid Redis URL {mask_url(url)}: {exc}") from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise ConfigError(f"{variable}: cannot reach Redis at {mask_url(url)}: {exc}") from exc
    return client


async def connect_role_redis(host: Host) -> tuple[aioredis.Redis, aioredis.Redis]:
    """(config cache and heartbeats, command streams): one client when both URLs agree.

    /readyz pings the first. Close them with :func:`close_role_redis`.
    """
    settings = host.settings
    assert settings.supervisor_redis_url and settings.redis_command_url
    ca = settings.redis_ca_file
    redis = await connect_redis(settings.supervisor_redis_url, "APP_SUPERVISOR_REDIS_URL", ca)
    host.readiness["redis"] = redis.ping
    if settings.redis_command_url == settings.supervisor_redis_url:
        return redis, redis
    try:
        commands = await connect_redis(settings.redis_command_url, "APP_COMMAND_REDIS_URL", ca)
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
