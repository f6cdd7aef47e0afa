"""Process adapters: where the supervisor's apps actually run.

``LocalProcess`` runs them in this process (shared-memory mode); the remote adapter sends
commands to worker environments. Both answer with one :class:`EnvResult` per environment,
so the admin API shapes its answers the same way in both modes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from nocosup.errors import CommandFailed, CommandTimeout, EnvironmentUnavailable, NocosupError
from nocosup.registry import AppRecord
from nocosup.runtime import LocalRuntime
from nocosup.status import AppStatus


@dataclass(frozen=True)
class EnvResult:
    """What one environment says after a command."""

    environment: str
    ok: bool
    status: str
    error: str | None = None
    #: No answer within NOCOSUP_COMMAND_TIMEOUT (the API answers 504).
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": self.status, "error": self.error}


def failure_type(failed: list[EnvResult]) -> type[NocosupError]:
    """The error for environments that failed a command: 504 when one stayed silent,
    503 when all were offline, else 502."""
    if any(r.timed_out for r in failed):
        return CommandTimeout
    if all(r.status == AppStatus.UNAVAILABLE.value for r in failed):
        return EnvironmentUnavailable
    return CommandFailed


class ProcessAdapter(ABC):
    """The supervisor's handle on wherever apps run."""

    #: Whether apps can move between environments (multi-environment mode only).
    can_move = False

    @abstractmethod
    async def restore(self, records: list[AppRecord]) -> None:
        """Learn every registered app at start-up (no boot)."""

    @abstractmethod
    async def create(self, record: AppRecord) -> None:
        """Provision the app's database where it runs; raise if that fails."""

    @abstractmethod
    async def update(self, record: AppRecord) -> None:
        """Pass a changed config on; it takes effect at the next start."""

    @abstractmethod
    async def start(self, record: AppRecord) -> list[EnvResult]:
        """Boot the app in each of its environments, in order."""

    @abstractmethod
    async def stop(self, record: AppRecord) -> list[EnvResult]:
        """Stop the app in each of its environments."""

    @abstractmethod
    async def remove(self, record: AppRecord, drop_database: bool) -> list[EnvResult]:
        """Stop and forget the app everywhere; drop its database only if asked."""

    async def leave(self, record: AppRecord, environments: list[str]) -> list[EnvResult]:
        """Stop and forget the app on ``environments``, which no longer run it (a move),
        keeping its database: the app lives on elsewhere."""
        raise NotImplementedError

    async def forget(self, record: AppRecord) -> None:
        """Drop what the adapter keeps of an app removed without every environment's
        consent (a forced delete)."""

    @abstractmethod
    async def run_command(
        self, record: AppRecord, command: str, args: dict[str, Any]
    ) -> list[EnvResult]:
        """Run a maintenance command in each of the app's environments, in order."""

    @abstractmethod
    def statuses(self, records: list[AppRecord]) -> Any:
        """``{app: {env: {"status", "error"}}}`` for ``records`` (a value or an awaitable)."""


class LocalProcess(ProcessAdapter):
    """Apps run in this process, in the one environment this host is."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime
        self.environment = runtime.environment

    async def restore(self, records: list[AppRecord]) -> None:
        for record in records:
            self.runtime.load(record)

    async def create(self, record: AppRecord) -> None:
        await self.runtime.create(record)

    async def update(self, record: AppRecord) -> None:
        self.runtime.load(record)

    async def start(self, record: AppRecord) -> list[EnvResult]:
        self.runtime.load(record)
        tenant = await self.runtime.start(record.name)
        return [self._result(tenant.status, tenant.error, AppStatus.RUNNING)]

    async def stop(self, record: AppRecord) -> list[EnvResult]:
        self.runtime.load(record)
        tenant = await self.runtime.stop(record.name)
        return [self._result(tenant.status, tenant.error, AppStatus.STOPPED)]

    async def remove(self, record: AppRecord, drop_database: bool) -> list[EnvResult]:
        await self.runtime.remove(record, drop_database)
        return [EnvResult(self.environment, True, AppStatus.NOT_FOUND.value)]

    async def run_command(
        self, record: AppRecord, command: str, args: dict[str, Any]
    ) -> list[EnvResult]:
        self.runtime.load(record)
        status, error, ok = await self.runtime.run_command(record.name, command, args)
        return [EnvResult(self.environment, ok, status.value, error)]

    def statuses(self, records: list[AppRecord]) -> dict[str, dict[str, dict[str, Any]]]:
        return {r.name: {self.environment: self.runtime.snapshot(r.name)} for r in records}

    def _result(self, status: AppStatus, error: str | None, wanted: AppStatus) -> EnvResult:
        return EnvResult(self.environment, status is wanted, status.value, error)
