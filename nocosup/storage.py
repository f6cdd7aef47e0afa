"""The storage directory: private (0700) when nocosup creates it, and checked at start.

It holds the registry and tenant SQLite files (created 0600, see :mod:`nocosup.sqlite`),
the generated admin token and app files: nobody but the server's user should read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nocosup.config import Settings
from nocosup.errors import ConfigError


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) if missing; the directory itself gets 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def check_storage(settings: Settings) -> None:
    """Make the storage directory and prove it writable, or raise a ConfigError naming
    NOCOSUP_STORAGE_DIR (a read-only or misplaced directory used to surface as a traceback
    in the middle of the start-up)."""
    path = settings.storage_dir
    try:
        private_dir(path)
        fd, probe = tempfile.mkstemp(prefix=".nocosup-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"NOCOSUP_STORAGE_DIR: cannot write to {str(path)!r} ({reason}); point it at a "
            "writable directory"
        ) from None
