"""The role of a host: what ``APP_MODE`` makes one process do.

A role is an object, not a hook: the host creates exactly one, starts it before the
plugins' ``startup`` hooks, serves tenant traffic through its :attr:`Role.gateway` and
stops it after the plugins' ``shutdown`` hooks. The services a role owns (a registry, a
runtime, a proxy...) are typed attributes of its class. Plugins provide roles through
the ``register_roles`` hook, so a built-in role can be disabled and replaced like any
other plugin.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Protocol

from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from nocosup.host import Host


class Gateway(Protocol):
    """Serves ``/apps/{name}/...`` (``scope`` already carries the app's ``root_path``)."""

    async def handle(self, name: str, scope: Scope, receive: Receive, send: Send) -> None: ...


class Role(ABC):
    """One process's job. Subclasses set :attr:`name` to the ``APP_MODE`` they implement."""

    #: The ``APP_MODE`` value this role implements.
    name: ClassVar[str]
    #: Whether a trusted proxy's ``X-Nocosup-App`` chooses the app of a request (a
    #: worker behind supervisors that route custom domains).
    serves_forwarded_app: ClassVar[bool] = False

    def __init__(self, host: Host) -> None:
        self.host = host
        self.settings = host.settings
        #: Set by :meth:`start`; ``None`` while the role serves no tenant traffic.
        self.gateway: Gateway | None = None
        #: Whether tenant requests are still served while the process drains after
        #: ``SIGTERM``. False where the tenants run here and are about to stop (a worker,
        #: shared-memory mode): a late request gets ``503 SHUTTING_DOWN``, which a
        #: supervisor sends to another environment. True for a role that only proxies (a
        #: multi-environment supervisor): its upstreams are unaffected, so it serves what
        #: reaches it until its connections close, rather than fail a request nobody retries.
        self.serves_while_draining = False

    def routes(self) -> list[BaseRoute]:
        """Routes the role adds to the host (called once, when the host is built)."""
        return []

    @abstractmethod
    async def start(self) -> None:
        """Open the role's services and set :attr:`gateway`. On failure, the host calls
        :meth:`stop` to release what was opened, so ``stop`` must cope with a half start."""

    @abstractmethod
    async def stop(self) -> None:
        """Close every service :meth:`start` opened, in reverse order (idempotent)."""

    async def gauges(self) -> list[Metric]:
        """Metric families read at scrape time (``GET /metrics``): apps by status and
        whatever else only the role knows. None by default."""
        return []
