"""Custom domains: which app a request's Host names, in one dict lookup.

The supervisor keeps :class:`DomainRoutes` current from the registry (at start and after
every create, update and delete of an app); the host asks it before anything else, so a
request to an app's domain reaches only that app, at the root path, whatever its path
(``/api``, ``/healthz`` and the page are the app's there, not nocosup's). Through the
proxy the choice travels to the worker in :data:`APP_HEADER`, which a worker believes only
from the proxies it trusts (``NOCOSUP_TRUSTED_PROXIES``, see :mod:`nocosup.forwarded`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.types import Scope

from nocosup.config import Settings
from nocosup.errors import DomainTaken
from nocosup.registry import AppRecord
from nocosup.validation import host_name

log = logging.getLogger("nocosup.domains")

#: Request header by which a supervisor's proxy tells a worker the app a request is for
#: (set for requests routed by domain: the path then says nothing about the app).
APP_HEADER = b"x-nocosup-app"
#: Scope key the host sets on a request it routed by domain (read by the proxy).
ROUTED_APP = "nocosup.routed_app"


class DomainRoutes:
    """``domain -> app name`` for every registered app's custom domains, except
    ``admin_host``: an app that got a domain before NOCOSUP_ADMIN_HOST was set to it does
    not get the admin's requests (logged at start)."""

    def __init__(self, admin_host: str | None = None) -> None:
        self.apps: dict[str, str] = {}
        #: The same, keyed by the domain's bytes, as the Host header comes.
        self._raw: dict[bytes, str] = {}
        #: Each app's routed domains, so that forgetting one app is not a scan of all.
        self._owned: dict[str, list[str]] = {}
        self.admin = host_name(admin_host.encode("latin-1")) if admin_host else None

    def __bool__(self) -> bool:
        return bool(self.apps)

    def replace(self, records: Iterable[AppRecord]) -> None:
        """Route exactly the domains of ``records`` (start-up)."""
        self.apps, self._raw, self._owned = {}, {}, {}
        for record in records:
            self.learn(record)

    def learn(self, record: AppRecord) -> None:
        """Route ``record``'s current domains (and no longer the ones it dropped)."""
        self.forget(record.name)
        for domain in record.domains:
            if domain == self.admin:
                log.error(
                    "app %s has the domain %s, which is NOCOSUP_ADMIN_HOST: not routed to it",
                    record.name,
                    domain,
                )
                continue
            self.apps[domain] = record.name
            self._raw[domain.encode("ascii")] = record.name
            self._owned.setdefault(record.name, []).append(domain)

    def forget(self, name: str) -> None:
        for domain in self._owned.pop(name, ()):
            if self.apps.get(domain) == name:
                del self.apps[domain]
                del self._raw[domain.encode("ascii")]

    def match(self, scope: Scope) -> str | None:
        """The app whose domain is the request's Host (port and case ignored), else None.
        Runs on every request once any app has a domain: bytes only, no decoding."""
        for key, value in scope["headers"]:
            if key == b"host":
                name = self._raw.get(value)
                if name is not None:
                    return name
                colon = value.rfind(b":")
                if colon > 0 and not value.endswith(b"]"):
                    value = value[:colon]
                return self._raw.get(value.strip().lower())
        return None


def check_admin_host(domains: list[str], settings: Settings) -> None:
    """DomainTaken when one of ``domains`` is NOCOSUP_ADMIN_HOST (without its port): the
    admin API and page and a tenant never share a host name."""
    if not settings.admin_host:
        return
    admin = host_name(settings.admin_host.encode("latin-1"))
    if admin in domains:
        raise DomainTaken(admin, "the admin API and page (NOCOSUP_ADMIN_HOST)")
