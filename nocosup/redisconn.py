"""Redis clients: one way to open them, so every part gets the same timeouts and checks."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from nocosup.errors import ConfigError


async def connect_redis(url: str, variable: str) -> aioredis.Redis:
    """A client for ``url`` that has answered a PING (else ConfigError naming ``variable``).

    Strings come back decoded. ``socket_timeout`` stays unset: command streams block in
    XREAD for seconds; health checks catch dead connections instead.
    """
    client = aioredis.from_url(
        url,
        decode_responses=True,
        health_check_interval=15,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise ConfigError(f"{variable}: cannot reach Redis at {url}: {exc}") from exc
    return client
