"""Signed control-plane messages: an HMAC-SHA256 envelope for what travels through Redis.

Without ``NOCOSUP_CLUSTER_SECRET`` anyone who can write to Redis can steer the cluster;
with it, every message a worker or supervisor writes for the other side (registration,
heartbeat, status, event, command, reply, config-cache record) carries three more fields:

- ``sig_at``: Unix time of signing (what staleness is measured from);
- ``sig_by``: the signing process's instance id;
- ``sig``: hex HMAC-SHA256, keyed by the secret, over the message *kind*, the *context*
  the receiver reads it in (the environment of a command stream, the instance of a
  heartbeat, ...), ``sig_at``, ``sig_by`` and every other field, in one canonical JSON
  array (fields sorted by name). A message copied to another kind or key fails.

The receiver checks with :func:`hmac.compare_digest` and drops what fails or is older
than the window its kind allows. :class:`Signer` without a secret signs nothing and
accepts everything, so callers need no branch of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nocosup.config import Settings

__all__ = ["SIGNATURE_FIELDS", "BadSignature", "RateLimitedLog", "Signer"]

SIGNATURE_FIELDS = ("sig", "sig_at", "sig_by")
#: How far the clocks of the machines of a cluster may disagree, in seconds: a signature
#: may be this far in the future, and every window below allows this much on top.
MAX_SKEW = 10.0


class BadSignature(ValueError):
    """A message that is unsigned, signed with another key, or too old."""


class Signer:
    """Signs and verifies envelopes with one cluster secret (or none)."""

    def __init__(self, secret: str | None, sender: str) -> None:
        self._key = secret.encode() if secret else None
        self.sender = sender

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def _mac(self, kind: str, context: str, fields: Mapping[str, str]) -> str:
        assert self._key is not None
        body = {k: str(v) for k, v in fields.items() if k != "sig"}
        canonical = json.dumps(
            [kind, context, sorted(body.items())], ensure_ascii=False, separators=(",", ":")
        )
        return hmac.new(self._key, canonical.encode(), hashlib.sha256).hexdigest()

    def sign(self, kind: str, context: str, fields: Mapping[str, str]) -> dict[str, str]:
        """``fields`` plus the envelope (a copy; unchanged without a secret)."""
        out = {k: v for k, v in fields.items() if k not in SIGNATURE_FIELDS}
        if self._key is None:
            return out
        out["sig_at"] = f"{time.time():.6f}"
        out["sig_by"] = self.sender
        out["sig"] = self._mac(kind, context, out)
        return out

    def verify(
        self, kind: str, context: str, fields: Mapping[str, object], max_age: float | None
    ) -> dict[str, str]:
        """The fields without the envelope, when they verify; BadSignature saying why.

        ``max_age`` (seconds) bounds how old the signature may be; None for messages
        that are written once and read for as long as they hold (statuses, cache
        records). Without a secret every message passes (envelope fields dropped).
        """
        plain = {k: v for k, v in fields.items() if isinstance(v, str)}
        if len(plain) != len(fields):
            raise BadSignature("a field is not a string")
        if self._key is None:
            return {k: v for k, v in plain.items() if k not in SIGNATURE_FIELDS}
        sig = plain.get("sig")
        if not sig:
            raise BadSignature("unsigned (NOCOSUP_CLUSTER_SECRET is set)")
        if not hmac.compare_digest(sig.encode(), self._mac(kind, context, plain).encode()):
            raise BadSignature("bad signature")
        try:
            signed_at = float(plain.get("sig_at", ""))
        except ValueError:
            raise BadSignature("bad sig_at") from None
        now = time.time()
        if not signed_at <= now + MAX_SKEW:  # NaN fails too
            raise BadSignature(f"signed {signed_at - now:.0f}s in the future")
        if max_age is not None and now - signed_at > max_age:
            raise BadSignature(f"stale: signed {now - signed_at:.0f}s ago (window {max_age:g}s)")
        return {k: v for k, v in plain.items() if k not in SIGNATURE_FIELDS}

    def sign_json(self, kind: str, context: str, value: Mapping[str, object]) -> str:
        """A JSON object carrying ``value`` and its envelope (as one string field holds it).

        The object's values are signed as their JSON texts, so any JSON value fits.
        """
        if self._key is None:
            return json.dumps(value)
        envelope = self.sign(kind, context, _as_text(value))
        return json.dumps({**value, **{k: envelope[k] for k in SIGNATURE_FIELDS}})

    def verify_json(
        self, kind: str, context: str, value: Mapping[str, object], max_age: float | None
    ) -> dict[str, object]:
        """The parsed object of :meth:`sign_json` without its envelope, when it verifies."""
        if self._key is None:
            return {k: v for k, v in value.items() if k not in SIGNATURE_FIELDS}
        text: dict[str, object] = {
            **_as_text({k: v for k, v in value.items() if k not in SIGNATURE_FIELDS}),
            **{k: value[k] for k in SIGNATURE_FIELDS if k in value},
        }
        self.verify(kind, context, text, max_age)
        return {k: v for k, v in value.items() if k not in SIGNATURE_FIELDS}


def cluster_signer(settings: Settings) -> Signer:
    """The signer of this process (its instance id as the sender)."""
    return Signer(settings.cluster_secret, settings.instance_id)


def command_window(settings: Settings) -> float:
    """How old a command or reply may be: nobody waits for one past the command timeout."""
    return settings.command_timeout + MAX_SKEW


def heartbeat_window(settings: Settings) -> float:
    """How old a registration, heartbeat or event may be: a heartbeat key lives 3 intervals
    and each beat signs the registration again."""
    return settings.heartbeat_interval * 3 + MAX_SKEW


def warn_if_unsigned(settings: Settings, logger: logging.Logger) -> None:
    """At start: say that without a cluster secret every Redis writer is trusted."""
    if not settings.cluster_secret:
        logger.warning(
            "NOCOSUP_CLUSTER_SECRET is not set: control-plane messages in Redis are not "
            "signed, so anyone who can write to that Redis can steer this cluster"
        )


def _as_text(value: Mapping[str, object]) -> dict[str, str]:
    return {k: json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in value.items()}


class RateLimitedLog:
    """Logs a kind of warning at most once per ``every`` seconds, counting the rest, so a
    flood of forged messages cannot fill the log."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) < self.every:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return
        self._last[kind] = now
        dropped = self._dropped.pop(kind, 0)
        suffix = f" ({dropped} more like it not logged)" if dropped else ""
        self.logger.warning(msg + suffix, *args)
