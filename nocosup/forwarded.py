"""Forwarded headers, believed from trusted proxies only.

``nocosup serve`` runs uvicorn without its own proxy-header handling, so a request's
``scope["client"]`` is the TCP peer. The host passes every HTTP and WebSocket request
through :func:`resolve` before anything reads it:

- **From a trusted proxy** (the peer is in ``NOCOSUP_TRUSTED_PROXIES``): the client is the
  last hop of ``X-Forwarded-For`` that is not itself a trusted proxy, the scheme comes from
  the last ``X-Forwarded-Proto`` and the ``Host`` header from the last
  ``X-Forwarded-Host``. Tenants (and the admin API) then see the public client, scheme and
  host, so the absolute URLs and redirects they build point where the client can go.
  The headers themselves stay, as the chain of trusted hops.
- **From anyone else**: every forwarding header (``Forwarded``, ``X-Forwarded-*``,
  ``X-Real-IP``) is dropped, so neither the host nor a tenant can be fooled by a client
  that sends its own.

A worker lists its supervisors in ``NOCOSUP_TRUSTED_PROXIES``; a supervisor lists the
load balancer or TLS terminator in front of it, if any.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.types import Scope

from nocosup.config import Settings

#: Scope key holding the peer's address when a trusted proxy's client replaced it (the
#: proxy to workers appends it to ``X-Forwarded-For``, as every hop must).
PEER = "nocosup.peer"

#: Request headers a client could use to pass itself off as someone or somewhere else.
FORWARDING = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
        b"x-forwarded-server",
        b"x-real-ip",
        # a supervisor's app choice for a request routed by custom domain (nocosup.domains)
        b"x-nocosup-app",
    }
)


def is_trusted(address: str, settings: Settings) -> bool:
    """Whether ``address`` is one of the proxies in ``NOCOSUP_TRUSTED_PROXIES``."""
    if not settings.trusted_proxies:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in settings.trusted_proxies)


def resolve(scope: Scope, settings: Settings) -> Scope:
    """``scope`` with the client, scheme and Host a trusted proxy vouches for, or with
    every forwarding header removed when the peer is not trusted; the same object when
    there is nothing to change (the common case of a direct client)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, _value in headers:
        if name in FORWARDING:
            break
    else:  # a plain loop: this runs on every request
        return scope
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    out: dict[str, Any] = dict(scope)
    if not is_trusted(peer, settings):
        out["headers"] = [(k, v) for k, v in headers if k not in FORWARDING]
        return out
    hops = _values(headers, b"x-forwarded-for")
    if hops:
        untrusted = [hop for hop in hops if not is_trusted(hop, settings)]
        out["client"] = (untrusted[-1] if untrusted else hops[0], 0)
        out[PEER] = peer
    proto = _last(headers, b"x-forwarded-proto").lower()
    if proto in ("http", "https"):
        secure = proto == "https"
        if scope["type"] == "websocket":
            out["scheme"] = "wss" if secure else "ws"
        else:
            out["scheme"] = proto
    host = _last(headers, b"x-forwarded-host")
    if host:
        value = host.encode("latin-1")
        out["headers"] = [(k, value if k == b"host" else v) for k, v in headers]
        if not any(k == b"host" for k, _ in headers):
            out["headers"].append((b"host", value))
    return out


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every comma-separated value of header ``name``, in order, across repeats."""
    found: list[str] = []
    for key, value in headers:
        if key == name:
            found.extend(v.strip() for v in value.decode("latin-1").split(","))
    return [v for v in found if v]


def _last(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    """The last value of ``name``: the one the nearest proxy added ('' when none)."""
    values = _values(headers, name)
    return values[-1] if values else ""
