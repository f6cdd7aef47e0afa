"""``Idempotency-Key`` on the admin API's writes: a retry gets the first answer.

A client that lost an answer (a timeout, a dropped connection, a supervisor replica that
died) cannot tell whether its create or start happened. Sent again with the same
``Idempotency-Key``, the call is not run twice: the first answer comes back, marked
``Idempotent-Replayed: true``. The answers live in the registry database, so a retry on
any supervisor replica finds them.

* The key is claimed before the call runs (a row in state ``pending``): a second call with
  it while the first still runs gets ``409 IDEMPOTENCY_KEY_IN_USE`` with Retry-After. A
  claim whose holder died is taken over after :func:`pending_lease` seconds.
* The key is bound to the request (method, path, query and body, hashed): reusing it for
  another request is ``422 IDEMPOTENCY_KEY_REUSED``.
* Answers below 500 are kept for :data:`TTL` seconds, errors included (a retried create
  of a taken name gets the same 409). A 5xx releases the key, so the retry runs again:
  a server-side failure is what retries are for.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING

from databases import Database
from starlette.requests import Request
from starlette.responses import Response

from nocosup import validation as v
from nocosup.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidInput,
    NocosupError,
)
from nocosup.registry import idempotency_table, is_unique_violation, iso_time
from nocosup.responses import error_response

if TYPE_CHECKING:
    from nocosup.config import Settings

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
#: Printable ASCII without spaces, as most APIs take (UUIDs, ULIDs, random tokens).
KEY = re.compile(r"[\x21-\x7e]{1,255}")
#: How long an answer is kept for retries.
TTL = 24 * 3600.0

Endpoint = Callable[[Request], Awaitable[Response]]


def pending_lease(settings: Settings) -> float:
    """Seconds after which a claim is presumed dead: longer than any admin call can run
    (each environment's command may take NOCOSUP_COMMAND_TIMEOUT, the boot NOCOSUP_BOOT_WAIT)."""
    return 3 * settings.command_timeout + settings.boot_wait + 30


def fingerprint(request: Request, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, request.url.query):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


class IdempotencyStore:
    """The claimed keys and kept answers, in the registry database."""

    def __init__(self, db: Database, lease: float) -> None:
        self.db = db
        self.lease = lease

    async def claim(self, key: str, print_: str) -> Response | None:
        """Claim ``key`` for a new run (None), or the kept answer of the first run.

        Raises IdempotencyKeyInUse or IdempotencyKeyReused."""
        now = time.time()
        table = idempotency_table
        await self.db.execute(table.delete().where(table.c.expires_at <= iso_time(now)))
        row = await self.db.fetch_one(table.select().where(table.c.key == key))
        if row is None:
            try:
                await self.db.execute(
                    table.insert().values(
                        key=key,
                        fingerprint=print_,
                        state="pending",
                        created_at=iso_time(now),
                        expires_at=iso_time(now + TTL),
                    )
                )
                return None
            except Exception as exc:  # the driver's unique violation: another claim won
                if not is_unique_violation(exc):
                    raise
            row = await self.db.fetch_one(table.select().where(table.c.key == key))
            if row is None:  # claimed and released in between: a fresh run is fine
                return await self.claim(key, print_)
        if row["fingerprint"] != print_:
            raise IdempotencyKeyReused()
        if row["state"] == "done":
            headers = {REPLAYED: "true"}
            if row["location"]:
                headers["Location"] = row["location"]
            return Response(
                row["body"] or "",
                status_code=row["status"],
                headers=headers,
                media_type="application/json",
            )
        if row["created_at"] > iso_time(now - self.lease):
            raise IdempotencyKeyInUse()
        # the claim outlived any run: its holder died. Take it over, once.
        taken = await self.db.execute(
            table.update()
            .where(table.c.key == key, table.c.created_at == row["created_at"])
            .values(created_at=iso_time(now), expires_at=iso_time(now + TTL))
        )
        if not taken:
            raise IdempotencyKeyInUse()
        return None

    async def keep(self, key: str, response: Response) -> None:
        await self.db.execute(
            idempotency_table.update()
            .where(idempotency_table.c.key == key)
            .values(
                state="done",
                status=response.status_code,
                body=bytes(response.body).decode(),
                location=response.headers.get("location"),
            )
        )

    async def release(self, key: str) -> None:
        await self.db.execute(idempotency_table.delete().where(idempotency_table.c.key == key))


def idempotent(endpoint: Endpoint) -> Endpoint:
    """Make an admin write honour ``Idempotency-Key`` (put it under ``admin_only``, so an
    unauthenticated caller never sees a kept answer)."""

    @wraps(endpoint)
    async def guarded(request: Request) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await endpoint(request)
        if not KEY.fullmatch(key):
            raise InvalidInput(
                f"{HEADER} must be 1 to 255 printable ASCII characters without spaces",
                field=HEADER,
            )
        store: IdempotencyStore | None = getattr(request.app.role, "idempotency", None)
        if store is None:  # the supervisor is starting or stopping
            return await endpoint(request)
        body = await v.read_body(request)
        request.state.raw_body = body  # the endpoint reads it from here
        kept = await store.claim(key, fingerprint(request, body))
        if kept is not None:
            return kept
        try:
            try:
                response = await endpoint(request)
            except NocosupError as exc:
                response = error_response(exc)
        except BaseException:
            await store.release(key)
            raise
        if response.status_code >= 500:
            await store.release(key)
        else:
            await store.keep(key, response)
        return response

    return guarded
