"""Redis addresses: plain URLs, and Redis Sentinel, where the master moves on failover.

Two ways to name a Sentinel-managed Redis, both checked at start (ConfigError naming the
variable) and both giving a :class:`SentinelTarget`:

* a URL ``redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/service[/db]``
  (``rediss+sentinel://`` talks TLS to the master and replicas; sentinels listen on
  26379 unless told);
* ``NOCOSUP_REDIS_SENTINELS`` (``host:port,...``) with ``NOCOSUP_REDIS_SENTINEL_MASTER``:
  every ``redis://`` or ``rediss://`` URL of nocosup then goes through those sentinels to
  that master, keeping the URL's credentials, database number and TLS, not its host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from nocosup.errors import ConfigError

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class SentinelTarget:
    """Where a Sentinel-managed master is found, and how to talk to it once found."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinels(value: str, variable: str) -> tuple[tuple[str, int], ...]:
    """``host[:port],host[:port]...`` as (host, port) pairs; ConfigError naming ``variable``."""
    out: list[tuple[str, int]] = []
    for item in value.split(","):
        item = item.strip()
        host, port = item, SENTINEL_PORT
        match = re.fullmatch(r"(.+?)(?::([0-9]{1,5}))?", item)
        if match and match.group(2) is not None:
            host, port = match.group(1), int(match.group(2))
        if not item or not _HOST.fullmatch(host) or not 1 <= port <= 65535:
            raise ConfigError(f"{variable}: {item!r} is not a host[:port] of a sentinel")
        out.append((host.strip("[]"), port))
    return tuple(out)


def parse_sentinel_url(url: str, variable: str) -> SentinelTarget:
    """The target of a ``redis+sentinel://`` URL; ConfigError naming ``variable``."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if not parts or not SERVICE_NAME.fullmatch(parts[0]) or len(parts) > 2:
        raise ConfigError(
            f"{variable}: a Sentinel URL is {scheme}://[user[:password]@]host[:port][,...]"
            f"/service[/db]; the service (master) name is missing or not valid in {mask_url(url)}"
        )
    db = _db(parts[1] if len(parts) == 2 else "0", variable)
    username, password = _credentials(userinfo)
    return SentinelTarget(
        sentinels=parse_sentinels(hosts, variable),
        service=parts[0],
        db=db,
        username=username,
        password=password,
        ssl=scheme.lower() == "rediss+sentinel",
    )


def through_sentinels(
    url: str, sentinels: tuple[tuple[str, int], ...], service: str, variable: str
) -> SentinelTarget:
    """A plain ``redis://`` URL reached through ``sentinels``: its host is not used."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"{variable}: with NOCOSUP_REDIS_SENTINELS set, Redis URLs must be redis:// or "
            f"rediss://; got {mask_url(url)}"
        )
    db = _db(parts.path.strip("/") or "0", variable)
    return SentinelTarget(
        sentinels=sentinels,
        service=service,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ssl=parts.scheme == "rediss",
    )


def _db(text: str, variable: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 1_000_000:
        raise ConfigError(f"{variable}: the database number must be a whole number; got {text!r}")
    return int(text)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None)


def mask_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (for logs, errors
    and API answers: Redis URLs carry AUTH passwords, ``redis://user:secret@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostport}{slash}{tail}"
