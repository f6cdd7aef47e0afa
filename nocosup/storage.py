"""The storage directory: private (0700) when nocosup creates it, and checked at start.

It holds the registry and tenant SQLite files (created 0600, see :mod:`nocosup.sqlite`),
the generated admin token and app files: nobody but the server's user should read it.
"""

from __future__ import annotations

import os
import shutil
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


def app_files(settings: Settings, name: str) -> Path:
    """The directory of app ``name``'s own files (``AppContext.storage_dir``)."""
    return settings.storage_dir / "apps" / name


def remove_app_files(settings: Settings, name: str) -> None:
    """Delete app ``name``'s files for good, with its database: a later app of the same
    name must start empty, not inherit them. Missing files are no error."""
    path = app_files(settings, name)
    try:
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except FileNotFoundError:
        # replicas of one environment share a storage directory: another one (or the
        # app's own shutdown) removed some of it first, which is what we want anyway
        if path.exists() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                raise
