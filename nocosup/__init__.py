"""nocosup: a multi-application supervisor for ASGI.

Public names: :func:`create_host`, :data:`hookimpl`, :class:`Settings`, :class:`AppContext`,
and the error classes in :mod:`nocosup.errors`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from nocosup.hookspecs import hookimpl

if TYPE_CHECKING:  # type checkers see the real names; at run time they load lazily
    from nocosup.appctx import AppContext
    from nocosup.config import Settings
    from nocosup.host import create_host

__all__ = ["AppContext", "Settings", "__version__", "create_host", "hookimpl"]


def __getattr__(name: str) -> object:
    # Lazy: importing nocosup (e.g. for hookimpl in a plugin) must not import the host.
    if name == "create_host":
        from nocosup.host import create_host

        return create_host
    if name == "Settings":
        from nocosup.config import Settings

        return Settings
    if name == "AppContext":
        from nocosup.appctx import AppContext

        return AppContext
    raise AttributeError(name)
