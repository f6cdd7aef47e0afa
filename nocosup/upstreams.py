"""Which environment URLs the supervisor may proxy to (``NOCOSUP_ALLOWED_UPSTREAMS``).

Environment URLs come from Redis, written by workers. Even with signed messages a
compromised worker could register any URL; the allow-list bounds where tenant traffic
(with its cookies, Authorization headers and bodies) can go. Entries match the URL's host
as written: an IP/CIDR entry matches IP-literal URLs inside it, a name entry matches that
name exactly (case-insensitive; no DNS lookup, which could answer differently when the
proxy connects); an entry with a port matches only that port (80/443 when the URL has
none). No entries: any URL.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from nocosup.config import Upstream

__all__ = ["UpstreamPolicy"]


class UpstreamPolicy:
    def __init__(self, allowed: tuple[Upstream, ...]) -> None:
        self.allowed = allowed

    @property
    def restricted(self) -> bool:
        return bool(self.allowed)

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be proxied to, or None when it may."""
        if not self.allowed:
            return None
        try:
            parts = urlsplit(url)
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            return f"{url!r:.200} is not a valid URL"
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                host
            )
        except ValueError:
            address = None
        for entry in self.allowed:
            if entry.port is not None and entry.port != port:
                continue
            if entry.network is not None:
                if address is not None and address in entry.network:
                    return None
            elif entry.host == host:
                return None
        return f"{host}:{port} is not in NOCOSUP_ALLOWED_UPSTREAMS"
