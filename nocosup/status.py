"""App statuses, the reference's names plus ``stopping``, ``idle`` and ``unavailable``.

stopped ──start──▶ preparing ─▶ initializing ─▶ initialized ─▶ running
   ▲                   │              │               │           │
   │                   └──────────────┴───────▶ error ◀───────────┤ (lifespan failed)
   └──────── stopping ◀──────────── stop ─────────────────────────┘
idle: not running but wanted (desired_state running): never booted since this process
started, or stopped after options.idleTimeout without traffic, or evicted for
NOCOSUP_MAX_RUNNING_APPS; the next request boots it (idle ─request─▶ preparing ...).
commanding: a maintenance command runs on the app (POST /api/apps/{name}/commands);
the previous status returns after, or error if the command failed.
not_found: an environment that does not know the app; unavailable: its environment is offline.
"""

from __future__ import annotations

from enum import StrEnum


class AppStatus(StrEnum):
    PREPARING = "preparing"
    INITIALIZING = "initializing"
    INITIALIZED = "initialized"
    RUNNING = "running"
    COMMANDING = "commanding"
    STOPPING = "stopping"
    STOPPED = "stopped"
    IDLE = "idle"
    ERROR = "error"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"


#: Statuses during which a boot is under way: requests wait for it.
BOOTING = frozenset({AppStatus.PREPARING, AppStatus.INITIALIZING, AppStatus.INITIALIZED})

#: Statuses in which the app holds no ASGI app and a request may boot it.
ASLEEP = frozenset({AppStatus.IDLE, AppStatus.STOPPED})
