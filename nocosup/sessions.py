"""Web page sessions: what the ``nocosup_admin`` cookie holds instead of the admin token.

A session id is 32 random bytes (URL-safe base64) handed to the browser once. The registry
database keeps only ``HMAC-SHA256(admin token, session id)``, so a copy of the table opens
nothing, every supervisor on the same database knows every session, and changing the admin
token ends them all. Sessions end at logout (the row is deleted) or ``NOCOSUP_SESSION_TTL``
seconds after login (expired rows are purged at each login).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from databases import Database

from nocosup.registry import iso_time, sessions_table

#: Longest session id accepted from a cookie (ours are 43 characters).
MAX_SESSION_ID = 128


class SessionStore:
    def __init__(self, db: Database, token: str, ttl: float) -> None:
        self.db = db
        self._key = token.encode()
        self.ttl = ttl

    def _hash(self, session_id: str) -> str:
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()

    async def create(self) -> str:
        """A new session; returns its id (the cookie value), stored only as a hash."""
        now = time.time()
        await self.db.execute(
            sessions_table.delete().where(sessions_table.c.expires_at <= iso_time(now))
        )
        session_id = secrets.token_urlsafe(32)
        await self.db.execute(
            sessions_table.insert().values(
                id_hash=self._hash(session_id),
                created_at=iso_time(now),
                expires_at=iso_time(now + self.ttl),
            )
        )
        return session_id

    async def valid(self, session_id: str | None) -> bool:
        """Whether ``session_id`` is a live session (not revoked, not expired)."""
        if not session_id or len(session_id) > MAX_SESSION_ID:
            return False
        row = await self.db.fetch_one(
            sessions_table.select().where(
                sessions_table.c.id_hash == self._hash(session_id),
                sessions_table.c.expires_at > iso_time(),
            )
        )
        return row is not None

    async def revoke(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= MAX_SESSION_ID:
            await self.db.execute(
                sessions_table.delete().where(sessions_table.c.id_hash == self._hash(session_id))
            )
