"""The worker role: runs the apps of one environment for a remote supervisor."""

from __future__ import annotations
