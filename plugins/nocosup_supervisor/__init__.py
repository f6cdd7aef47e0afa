"""The supervisor role: the registry, the admin API, and apps run here or on workers."""

from __future__ import annotations

from nocosup.hookspecs import hookimpl
from nocosup.role import Role
from nocosup_supervisor.role import SupervisorRole

__all__ = ["SupervisorRole"]


@hookimpl
def register_roles() -> list[type[Role]]:
    return [SupervisorRole]
