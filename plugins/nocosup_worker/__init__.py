"""The worker role: runs the apps of one environment for a remote supervisor."""

from __future__ import annotations

from nocosup.hookspecs import hookimpl
from nocosup.role import Role
from nocosup_worker.role import WorkerRole

__all__ = ["WorkerRole"]


@hookimpl
def register_roles() -> list[type[Role]]:
    return [WorkerRole]
