"""PostgreSQL for ``databases`` with timeouts and a per-process connection budget.

asyncpg's pool bounds one database; a process hosting many apps has one pool per app,
and about 70 apps held 97 of PostgreSQL's 100 connections. Here every pool draws its
connections from a :class:`ConnectionBudget` shared by the process's tenant databases
(``NOCOSUP_DB_MAX_CONNECTIONS``; the registry gets a budget of its own). A connection
unused for ``NOCOSUP_DB_POOL_IDLE`` seconds is closed; when the budget is spent, the
least recently used idle connection of any pool is closed to make room; when every
connection is busy, a query waits at most ``NOCOSUP_DB_BUDGET_WAIT`` seconds.

Every connection is opened with a connect timeout and a statement timeout (asyncpg's
``command_timeout`` on the client, ``statement_timeout`` on the server): a database
that does not answer gives :class:`~nocosup.errors.DatabaseUnavailable` (503) instead of
a request that hangs. Use the URL scheme ``postgresql+nocosup://``; :func:`pg_database`
builds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from databases import Database, DatabaseURL
from databases.backends.postgres import PostgresBackend, PostgresConnection
from databases.interfaces import Record
from sqlalchemy.sql import ClauseElement

from nocosup.errors import DatabaseUnavailable

__all__ = ["SCHEME", "ConnectionBudget", "DbTimeouts", "pg_database", "unavailable"]

SCHEME = "postgresql+nocosup"
log = logging.getLogger("nocosup.db")

#: What a database that is down, frozen or out of connections raises through asyncpg.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,  # the server's statement_timeout
    asyncpg.AdminShutdownError,
)


@dataclass(frozen=True)
class DbTimeouts:
    """Seconds to open a connection and to run one statement."""

    connect: float
    statement: float


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn a timeout or a lost connection into DatabaseUnavailable saying ``what``."""
    try:
        yield
    except _UNAVAILABLE as exc:
        detail = str(exc) or type(exc).__name__
        raise DatabaseUnavailable(f"{what}: the database did not answer ({detail})") from exc


class ConnectionBudget:
    """At most ``limit`` connections open at once across every pool that shares it."""

    def __init__(self, limit: int, idle: float, wait: float) -> None:
        self.limit = limit
        self.idle = idle
        self.wait = wait
        #: Connections open (or being opened) under this budget.
        self.open = 0
        #: Idle connections, least recently used first, with their pool and release time.
        self._idle: OrderedDict[asyncpg.Connection, tuple[BudgetPool, float]] = OrderedDict()
        self._changed: asyncio.Event | None = None
        #: A timer, not a task: nothing is left pending when the loop ends.
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def reserve(self) -> bool:
        """Take a slot for a new connection: a free one, else the one of the least
        recently used idle connection (closed here). False when every slot is busy."""
        if self.open < self.limit:
            self.open += 1
            return True
        if not self._idle:
            return False
        conn, (pool, _) = self._idle.popitem(last=False)
        pool.forget_idle(conn)
        try:
            await _close(conn)  # the slot passes to the caller only once it is really free
        except BaseException:
            self.free()  # cancelled while closing: the slot is nobody's
            raise
        return True

    def exhausted(self) -> bool:
        """Every slot holds a busy connection: nothing to take or to make room from."""
        return self.open >= self.limit and not self._idle

    def free(self) -> None:
        self.open -= 1
        self.notify()

    def parked(self, conn: asyncpg.Connection, pool: BudgetPool) -> None:
        loop = asyncio.get_running_loop()
        self._idle[conn] = (pool, loop.time())
        if self._timer is None:
            self._timer = loop.call_later(self.idle, self._reap)
        self.notify()

    def unparked(self, conn: asyncpg.Connection) -> None:
        self._idle.pop(conn, None)

    def notify(self) -> None:
        """Wake every waiter: a slot or a connection may be free now."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def changed(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _reap(self) -> None:
        """Close the connections idle for ``idle`` seconds; come back for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        expired: list[asyncpg.Connection] = []
        while self._idle:
            conn, (pool, since) = next(iter(self._idle.items()))
            if since + self.idle > now:
                self._timer = loop.call_later(since + self.idle - now, self._reap)
                break
            del self._idle[conn]
            pool.forget_idle(conn)
            expired.append(conn)
        if expired:
            task = loop.create_task(self._close_all(expired), name="db-idle-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_all(self, conns: list[asyncpg.Connection]) -> None:
        for conn in conns:
            try:
                await _close(conn)
            finally:
                self.free()


class BudgetPool:
    """The connections of one database: at most ``max_size``, drawn from ``budget``."""

    def __init__(
        self,
        budget: ConnectionBudget,
        max_size: int,
        timeouts: DbTimeouts,
        connect_kwargs: dict[str, Any],
        label: str,
    ) -> None:
        self.budget = budget
        self.max_size = max_size
        self.timeouts = timeouts
        self.connect_kwargs = connect_kwargs
        self.label = label
        self.size = 0
        self._idle: list[asyncpg.Connection] = []
        self._closed = False

    async def open(self) -> None:
        """Open one connection now (then keep it idle): a database that cannot be reached
        fails ``Database.connect()``, as asyncpg's pool does. When every connection of the
        budget is busy, the first query opens it instead: a boot must not fail (and leave
        its app in error) because other apps are busy for a moment."""
        if self.budget.exhausted():
            return
        conn = await self.acquire()
        await self.release(conn)

    async def acquire(self) -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget.wait
        while True:
            if self._closed:
                raise DatabaseUnavailable(f"database {self.label!r} is closed")
            if self._idle:
                conn = self._idle.pop()
                self.budget.unparked(conn)
                return conn
            if self.size < self.max_size and await self.budget.reserve():
                self.size += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.size -= 1
                    self.budget.free()
                    raise
            left = deadline - loop.time()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"database {self.label!r}: no connection came free within "
                    f"{self.budget.wait:g} s ({self.budget.open} of {self.budget.limit} open, "
                    f"{self.size} of {self.max_size} for this database)"
                )
            await self.budget.changed(left)

    async def _connect(self) -> asyncpg.Connection:
        with unavailable(f"cannot connect to database {self.label!r}"):
            async with asyncio.timeout(self.timeouts.connect + 1):
                conn: asyncpg.Connection = await asyncpg.connect(
                    timeout=self.timeouts.connect,
                    command_timeout=self.timeouts.statement,
                    **self.connect_kwargs,
                )
        return conn

    async def release(self, conn: asyncpg.Connection) -> None:
        if _spoilt(conn):
            # timed out or broken: dropped at once (its server may not answer a goodbye)
            conn.terminate()
            self.size -= 1
            self.budget.free()
            return
        if self._closed:
            try:
                await _close(conn)
            finally:
                self.size -= 1
                self.budget.free()
            return
        self._idle.append(conn)
        self.budget.parked(conn, self)

    def forget_idle(self, conn: asyncpg.Connection) -> None:
        """The budget closes ``conn`` (idle too long, or its slot is wanted elsewhere)."""
        self._idle.remove(conn)
        self.size -= 1

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self.budget.unparked(conn)
        for conn in idle:
            try:
                await _close(conn)
            finally:
                self.size -= 1
                self.budget.free()


def _spoilt(conn: asyncpg.Connection) -> bool:
    """Closed, inside a transaction nobody ended, or cancelling a timed-out statement."""
    if conn.is_closed() or conn.is_in_transaction():
        return True
    protocol = getattr(conn, "_protocol", None)
    cancelling = getattr(protocol, "_is_cancelling", None)
    return bool(cancelling()) if callable(cancelling) else False


async def _close(conn: asyncpg.Connection) -> None:
    """Close politely for a moment (the server forgets the session), else drop it."""
    try:
        await conn.close(timeout=2)
    except Exception:
        conn.terminate()


class BudgetConnection(PostgresConnection):
    """A ``databases`` connection whose failures to answer are DatabaseUnavailable."""

    _database: BudgetBackend

    async def acquire(self) -> None:
        assert self._connection is None, "Connection is already acquired"
        pool = self._database.pool
        assert pool is not None, "DatabaseBackend is not running"
        self._connection = await pool.acquire()

    async def release(self) -> None:
        assert self._connection is not None, "Connection is not acquired"
        pool = self._database.pool
        assert pool is not None, "DatabaseBackend is not running"
        conn, self._connection = self._connection, None
        await pool.release(conn)

    async def fetch_all(self, query: ClauseElement) -> list[Record]:
        with unavailable(self._database.what):
            return await super().fetch_all(query)

    async def fetch_one(self, query: ClauseElement) -> Record | None:
        with unavailable(self._database.what):
            return await super().fetch_one(query)

    async def execute(self, query: ClauseElement) -> Any:
        with unavailable(self._database.what):
            return await super().execute(query)

    async def execute_many(self, queries: Sequence[ClauseElement]) -> None:
        with unavailable(self._database.what):
            await super().execute_many(list(queries))


class BudgetBackend(PostgresBackend):
    """``databases``' PostgreSQL backend on a :class:`BudgetPool` instead of asyncpg's."""

    def __init__(self, database_url: DatabaseURL | str, **options: Any) -> None:
        self._budget: ConnectionBudget = options.pop("budget")
        self._timeouts: DbTimeouts = options.pop("timeouts")
        self._max_size: int = options.pop("max_size", 5)
        options.pop("min_size", None)
        super().__init__(database_url, **options)
        self.what = f"database {self._database_url.database!r}"
        self.pool: BudgetPool | None = None

    async def connect(self) -> None:
        assert self.pool is None, "DatabaseBackend is already running"
        url = self._database_url
        kwargs: dict[str, Any] = {
            "host": url.hostname,
            "port": url.port,
            "user": url.username,
            "password": url.password,
            "database": url.database,
        }
        settings = dict(self._options.get("server_settings") or {})
        # the server ends a statement a moment after the client gave up on it
        settings.setdefault("statement_timeout", str(int(self._timeouts.statement * 1000) + 500))
        kwargs["server_settings"] = settings
        pool = BudgetPool(self._budget, self._max_size, self._timeouts, kwargs, url.database)
        await pool.open()
        self.pool = pool
        self._pool = pool  # type: ignore[assignment]

    async def disconnect(self) -> None:
        assert self.pool is not None, "DatabaseBackend is not running"
        pool, self.pool = self.pool, None
        self._pool = None
        await pool.close()

    def connection(self) -> BudgetConnection:
        return BudgetConnection(self, self._dialect)


Database.SUPPORTED_BACKENDS[SCHEME] = f"{__name__}:BudgetBackend"


def pg_database(
    url: str,
    budget: ConnectionBudget,
    timeouts: DbTimeouts,
    max_size: int,
    server_settings: dict[str, str] | None = None,
) -> Database:
    """A ``Database`` on the PostgreSQL ``url`` (``postgresql://...``) drawing on ``budget``."""
    options: dict[str, Any] = {"budget": budget, "timeouts": timeouts, "max_size": max_size}
    if server_settings:
        options["server_settings"] = server_settings
    return Database(SCHEME + url[len("postgresql") :], **options)
