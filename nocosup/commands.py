"""Commands from the supervisor to worker environments over Redis streams.

Delivery: one stream per environment (``{p}:env:{env}:cmds``) and one consumer group per
worker instance, so every live replica of the environment sees every command. A worker
acknowledges (``XACK``) only after the effect is done and its result written. A worker
that starts looks for groups of dead instances of its environment and finishes what they
left unacknowledged ("reclaim"), so a command never dies with the process that took it.

Results: the worker ``XADD``s its reply to the sender's reply stream and records it in
``{p}:cmd:{id}`` (kept ``RESULT_TTL``, 10 minutes, after the last reply). The sender has
one reader task resolving waiters by request id; a waiter that missed the stream entry
finds the hash. A redelivered command whose id the instance already answered is answered
again from that hash, not re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from nocosup.errors import CommandTimeout
from nocosup.heartbeat import Presence
from nocosup.redisconn import raise_if_cancelled
from nocosup.rediskeys import Keys
from nocosup.registry import AppRecord, InvalidRecord, now_iso
from nocosup.signing import BadSignature, RateLimitedLog, Signer
from nocosup.validation import APP_NAME

log = logging.getLogger("nocosup.commands")

ACTIONS = ("create", "update", "start", "stop", "remove", "run", "ping")
PROTOCOL = "1"
STREAM_MAXLEN = 10_000
REPLY_MAXLEN = 10_000
#: Dead letters kept per environment (approximately: XADD MAXLEN ~).
DEAD_MAXLEN = 1_000
#: Longest copy of an entry's fields kept in a dead letter.
DEAD_FIELDS_MAX = 16_384
#: Request ids go into key names ({p}:cmd:{id}).
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Long enough for late waiters and for redeliveries after a worker restart.
RESULT_TTL = 600
BLOCK_MS = 2_000


def reply_stream_ttl(heartbeat_interval: float) -> float:
    """Seconds a supervisor's reply stream outlives its last sign of life: its owner renews
    the expiry every heartbeat interval, so a supervisor killed with SIGKILL leaves its
    stream for at most 6 intervals (1 minute by default)."""
    return heartbeat_interval * 6


class MalformedCommand(ValueError):
    """A stream entry that is not a command this worker understands."""


class RefusedCommand(Exception):
    """A well-formed command the worker will not run (it asks for what the worker's own
    settings do not give that app): dead-lettered with the reason, never run."""


@dataclass(frozen=True)
class Command:
    """One request to an environment; ``id`` makes redelivery idempotent."""

    action: str
    app: str
    record: dict[str, Any] | None = None
    args: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    sent_at: float = field(default_factory=time.time)

    def fields(self) -> dict[str, str]:
        out = {
            "v": PROTOCOL,
            "id": self.id,
            "action": self.action,
            "app": self.app,
            "args": json.dumps(self.args),
            "sent_at": f"{self.sent_at:.6f}",
        }
        if self.record is not None:
            out["record"] = json.dumps(self.record)
        if self.reply_to:
            out["reply_to"] = self.reply_to
        return out

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Command:
        try:
            if fields.get("v") != PROTOCOL:
                raise MalformedCommand(f"unknown protocol version {fields.get('v')!r}")
            action = fields["action"]
            if action not in ACTIONS:
                raise MalformedCommand(f"unknown action {action!r}")
            record = json.loads(fields["record"]) if "record" in fields else None
            args = json.loads(fields.get("args") or "{}")
            if not isinstance(args, dict) or (record is not None and not isinstance(record, dict)):
                raise MalformedCommand("args and record must be JSON objects")
            if action not in ("ping",) and record is None:
                raise MalformedCommand(f"action {action!r} needs a record")
            request_id, app = fields["id"], fields["app"]
            if not REQUEST_ID.fullmatch(request_id):
                raise MalformedCommand(f"invalid request id {request_id!r:.80}")
            if not APP_NAME.fullmatch(app):
                raise MalformedCommand(f"invalid app name {app!r:.80}")
            if record is not None:
                try:
                    checked = AppRecord.from_json(record)
                except InvalidRecord as exc:
                    raise MalformedCommand(f"invalid record: {exc}") from None
                if checked.name != app:
                    raise MalformedCommand(f"the record is of {checked.name!r}, not {app!r}")
            return cls(
                action=action,
                app=app,
                record=record,
                args=args,
                reply_to=fields.get("reply_to"),
                id=request_id,
                sent_at=float(fields.get("sent_at") or 0),
            )
        except MalformedCommand:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedCommand(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Reply:
    """One instance's answer to one command."""

    id: str
    environment: str
    instance: str
    ok: bool
    status: str
    error: str | None = None

    def fields(self) -> dict[str, str]:
        return {
            "id": self.id,
            "env": self.environment,
            "instance": self.instance,
            "ok": "1" if self.ok else "0",
            "status": self.status,
            "error": self.error or "",
        }

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> Reply:
        return cls(
            f["id"],
            f["env"],
            f["instance"],
            f.get("ok") == "1",
            f.get("status", ""),
            f.get("error") or None,
        )


@dataclass
class _Waiter:
    expected: set[str]
    replies: dict[str, Reply] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, reply: Reply) -> None:
        self.replies[reply.instance] = reply
        if self.expected <= set(self.replies):
            self.event.set()


class CommandSender:
    """The supervisor's side: send a command to an environment and await every replica."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        instance: str,
        presence: Presence,
        signer: Signer | None = None,
        window: float | None = None,
        reply_ttl: float = 60,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.reply_stream = keys.replies(instance)
        #: Expiry of the reply stream, renewed every sixth of it while this process lives.
        self.reply_ttl = reply_ttl
        self._renewer: asyncio.Task[None] | None = None
        self.presence = presence
        self.signer = signer or Signer(None, instance)
        #: How old a reply may be (None: any age).
        self.window = window
        self._dropped = RateLimitedLog(log)
        self._waiters: dict[str, _Waiter] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_replies(), name="command-replies")
        self._renewer = asyncio.create_task(self._renew(), name="reply-stream-expiry")

    async def _renew(self) -> None:
        """Keep the reply stream's expiry ahead while this process lives (workers set it
        when their reply creates the stream): a killed supervisor's stream expires."""
        while True:
            try:
                await self.redis.pexpire(self.reply_stream, int(self.reply_ttl * 1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("could not renew the reply stream's expiry: %r", exc)
            await asyncio.sleep(self.reply_ttl / 6)

    async def close(self) -> None:
        for task in (self._reader, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(RedisError):
            await self.redis.delete(self.reply_stream)

    async def send(self, env: str, command: Command, timeout: float) -> list[Reply]:
        """XADD ``command`` for ``env`` and wait for a reply from each live instance.

        Instances that die while we wait are no longer waited for; a reply from another
        instance of the environment (one that reclaimed the command) counts. Raises
        CommandTimeout naming the instances that stayed silent.
        """
        expected = await self.presence.instances(env)
        if not expected:
            return []
        command = Command(
            command.action,
            command.app,
            command.record,
            command.args,
            self.reply_stream,
            command.id,
            command.sent_at,
        )
        waiter = self._waiters[command.id] = _Waiter(expected)
        try:
            # redis-py types xadd's fields as an invariant dict of unions: no dict[str, str]
            # fits (redis/redis-py#2917)
            await self.redis.xadd(
                self.keys.commands(env),
                self.signer.sign("command", env, command.fields()),  # type: ignore[arg-type]
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
            deadline = time.monotonic() + timeout
            while not waiter.event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(waiter.expected - set(waiter.replies))
                    raise CommandTimeout(
                        f"environment {env!r} did not answer {command.action} of "
                        f"{command.app!r} within {timeout:g}s (silent: {', '.join(missing)})",
                        environment=env,
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, 0.5)):
                        await waiter.event.wait()
                if not waiter.event.is_set():
                    await self._recheck(env, command.id, waiter)
            return list(waiter.replies.values())
        finally:
            self._waiters.pop(command.id, None)

    async def _recheck(self, env: str, request_id: str, waiter: _Waiter) -> None:
        """Pick up replies the stream reader missed; stop waiting for dead instances."""
        stored = await self.redis.hgetall(self.keys.command(request_id))
        for raw in stored.values():
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                reply = self._verified(request_id, json.loads(raw))
                if reply is not None:
                    waiter.add(reply)
        live = await self.presence.instances(env)
        waiter.expected &= live | set(waiter.replies)
        if waiter.expected <= set(waiter.replies) and (waiter.replies or not waiter.expected):
            waiter.event.set()

    def _verified(self, request_id: str, fields: dict[str, Any]) -> Reply | None:
        """The reply in ``fields`` when its signature holds (and it answers
        ``request_id``); None (logged, rate-limited) when it does not."""
        try:
            plain = self.signer.verify("reply", request_id, fields, self.window)
        except BadSignature as exc:
            self._dropped.warning(
                "reply", "ignoring a reply to %.64s that does not verify: %s", request_id, exc
            )
            return None
        reply = Reply.from_fields(plain)
        return reply if reply.id == request_id else None

    async def _read_replies(self) -> None:
        last = "0-0"
        while True:
            try:
                batches = await self.redis.xread(
                    {self.reply_stream: last}, count=500, block=BLOCK_MS
                )
                raise_if_cancelled()  # redis-py may retry a read it was cancelled in
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                log.warning("reading command replies failed, retrying: %r", exc)
                await asyncio.sleep(0.5)
                continue
            assert isinstance(batches, list)  # RESP2 (not RESP3's dict): [[stream, entries]]
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        reply = self._verified(str(fields.get("id")), fields)
                    except KeyError:
                        log.warning("ignoring malformed reply %s: %.200r", entry_id, fields)
                        continue
                    if reply is None:
                        continue
                    waiter = self._waiters.get(reply.id)
                    if waiter is not None:
                        waiter.add(reply)


Handler = Callable[[Command], Awaitable[Reply]]


def _log_error(_kind: str, msg: str, *args: object) -> None:
    log.error(msg, *args)


class CommandConsumer:
    """The worker's side: read its environment's stream, run commands, reply, then ack.

    Nothing an entry holds can stop it: an entry that is malformed, whose ``reply_to`` is
    not a reply stream, or whose processing or reply raised is moved to the environment's
    dead-letter stream (``{p}:env:{env}:dead``) and acknowledged; an error anywhere in the
    loop is logged and the loop starts over. :attr:`error` says what is failing now (None
    when the last read succeeded), for ``/readyz``.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        env: str,
        instance: str,
        handler: Handler,
        presence: Presence,
        concurrency: int = 32,
        signer: Signer | None = None,
        window: float | None = None,
        reply_ttl: float = 60,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.env = env
        #: Expiry a reply gives the reply stream it creates (its owner renews it).
        self.reply_ttl_ms = int(reply_ttl * 1000)
        self.instance = instance
        self.stream = keys.commands(env)
        self.dead = keys.dead(env)
        self.group = instance
        self.handler = handler
        self.presence = presence
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Id of the last entry read: where a re-created group resumes.
        self._last_read: str | None = None
        #: Why the consumer cannot read commands now; None while it can.
        self.error: str | None = None
        #: How many times the loop failed and started over.
        self.restarts = 0
        #: An entry could not be dead-lettered and stays pending: retry when Redis is back.
        self._left_pending = False
        self.signer = signer or Signer(None, instance)
        #: How old a command may be (None: any age).
        self.window = window
        #: Ids of signed commands run within the window, by when: a copy is a replay.
        self._seen: dict[str, float] = {}
        self._rejected = RateLimitedLog(log)

    async def run(self) -> None:
        """Consume until cancelled: an exception is logged and the loop starts over (after
        a pause), so it survives Redis restarts and anything an entry holds."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise_if_cancelled()
                self.restarts += 1
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("the command consumer failed; starting it over")
                await asyncio.sleep(min(0.5 * self.restarts, 5))

    async def _consume(self) -> None:
        await self._ensure_group()
        await self._drain_own_pending()
        await self.reclaim_dead()
        while True:
            try:
                batches = await self.redis.xreadgroup(
                    self.group, self.instance, {self.stream: ">"}, count=100, block=BLOCK_MS
                )
                raise_if_cancelled()  # redis-py may retry a read it was cancelled in
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                raise_if_cancelled()
                if "NOGROUP" in str(exc):
                    # Redis lost the stream (restart) or the group: resume after the last
                    # entry read, so commands sent before the group is back are not skipped
                    resume = self._last_read or "0"
                    log.warning(
                        "command group vanished (Redis restarted?); re-creating it from %s", resume
                    )
                    await self._ensure_group(resume)
                    continue
                if "UNBLOCKED" in str(exc):
                    continue  # the stream was deleted while we waited: the next read says more
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("reading commands failed, retrying: %r", exc)
                await asyncio.sleep(0.5)
                continue
            except Exception as exc:
                raise_if_cancelled()
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("reading commands failed, retrying: %r", exc)
                await asyncio.sleep(0.5)
                continue
            self.error = None
            if self._left_pending and not self._tasks:
                # a dead letter could not be written: Redis answers again, so try once more
                self._left_pending = False
                await self._drain_own_pending()
            if not isinstance(batches, list):  # RESP2 (not RESP3's dict): [[stream, entries]]
                raise TypeError(f"unexpected XREADGROUP reply {batches!r:.200}")
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    self._last_read = entry_id
                    await self._spawn(self.group, entry_id, fields or {}, redelivered=False)

    async def close(self, grace: float = 10) -> None:
        """Let the commands under way finish (for ``grace`` seconds), then cancel the rest:
        nothing of the consumer may touch Redis after this returns (its client closes next).
        A cancelled command stays unacknowledged and is finished by a later instance."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=grace)
        if pending:
            log.warning("%d commands still running at shutdown: cancelled", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _ensure_group(self, start: str = "$") -> None:
        """Create this instance's group (new entries only, unless ``start`` says where)."""
        while True:
            try:
                await self.redis.xgroup_create(self.stream, self.group, id=start, mkstream=True)
                return
            except ResponseError as exc:
                raise_if_cancelled()
                if "BUSYGROUP" in str(exc):
                    return
                raise
            except (RedisError, OSError) as exc:
                raise_if_cancelled()
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot create the command group yet: %r", exc)
                await asyncio.sleep(0.5)

    async def _drain_own_pending(self) -> None:
        """Entries this instance (same NOCOSUP_INSTANCE_ID) took but never acknowledged."""
        result = await self.redis.xreadgroup(
            self.group, self.instance, {self.stream: "0"}, count=1000
        )
        assert isinstance(result, list)  # RESP2 (not RESP3's dict): [[stream, entries]]
        for _stream, entries in result or []:
            for entry_id, fields in entries:
                if fields:
                    await self._spawn(self.group, entry_id, fields, redelivered=True)

    async def reclaim_dead(self) -> None:
        """Finish what dead instances of this environment left unacknowledged."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError:
            return
        live = await self.presence.instances(self.env)
        for info in groups:
            group = info["name"]
            if group == self.group or group in live:
                continue
            claim = self.keys.reclaim(self.env, group)
            if not await self.redis.set(claim, self.instance, nx=True, ex=60):
                continue
            pending = await self.redis.xpending_range(self.stream, group, "-", "+", 1000)
            for item in pending:
                entries = await self.redis.xrange(
                    self.stream, item["message_id"], item["message_id"]
                )
                # the clients decode replies (redisconn): str ids, dict[str, str] fields
                for entry_id, fields in cast("list[tuple[str, dict[str, str]]]", entries):
                    log.info("reclaiming %s left by dead instance %s", entry_id, group)
                    await self._process(group, entry_id, fields or {})
            with contextlib.suppress(ResponseError):
                await self.redis.xgroup_destroy(self.stream, group)

    async def _spawn(
        self, group: str, entry_id: str, fields: dict[str, str], redelivered: bool
    ) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._run_one(group, entry_id, fields, redelivered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_one(
        self, group: str, entry_id: str, fields: dict[str, str], redelivered: bool
    ) -> None:
        try:
            await self._process(group, entry_id, fields, redelivered)
        except Exception:  # _process dead-letters what fails: this guards its own bugs
            log.exception("processing command entry %s failed", entry_id)
        finally:
            self._slots.release()

    async def _process(
        self, group: str, entry_id: str, fields: dict[str, str], redelivered: bool = True
    ) -> None:
        """Run one entry, reply, then acknowledge. A ``redelivered`` entry (this instance's
        pending list after a restart, or a dead instance's) may have been answered before:
        its stored answer is sent again instead of running it twice. An entry that cannot
        be run or answered goes to the dead letters."""
        try:
            plain = self.signer.verify("command", self.env, fields, self.window)
            if not redelivered:
                # a pending entry taken again is the same entry (answered from its stored
                # result), not a copy; a copy is always a new entry
                self._check_replay(plain.get("id"))
        except BadSignature as exc:
            # not from a supervisor of this cluster: never answered, only dead-lettered
            await self._dead_letter(group, entry_id, fields, f"rejected: {exc}", answer=False)
            return
        try:
            command = Command.parse(plain)
            if command.reply_to is not None and not self.keys.is_reply_stream(command.reply_to):
                raise MalformedCommand(
                    f"reply_to {command.reply_to!r:.120} is not a reply stream "
                    f"({self.keys.replies('{instance}')})"
                )
        except MalformedCommand as exc:
            await self._dead_letter(group, entry_id, fields, f"malformed command: {exc}")
            return
        try:
            await self._answer(command, redelivered)
        except asyncio.CancelledError:
            raise
        except RefusedCommand as exc:
            await self._dead_letter(group, entry_id, fields, f"refused: {exc}")
            return
        except Exception as exc:
            log.exception("command %s (%s %s) failed", command.id, command.action, command.app)
            await self._dead_letter(
                group, entry_id, fields, f"processing failed: {type(exc).__name__}: {exc}"
            )
            return
        await self._ack(group, entry_id)

    def _check_replay(self, request_id: str | None) -> None:
        """A signed command whose id ran here within the window is a copy: BadSignature."""
        if not self.signer.enabled or request_id is None:
            return
        now = time.monotonic()
        if len(self._seen) > 10_000 or (self._seen and next(iter(self._seen.values())) < now):
            self._seen = {k: t for k, t in self._seen.items() if t >= now}
        if request_id in self._seen:
            raise BadSignature(f"replayed command id {request_id!r:.80}")
        self._seen[request_id] = now + (self.window or 0) + 1

    async def _answer(self, command: Command, redelivered: bool) -> None:
        """Run ``command`` (or reuse this instance's stored answer) and publish the reply."""
        done = None
        if redelivered:
            done = await self.redis.hget(self.keys.command(command.id), self.instance)
        reply = None
        if done is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                # our own earlier answer: any age (it is signed again when sent)
                reply = Reply.from_fields(
                    self.signer.verify("reply", command.id, json.loads(done), None)
                )
        if reply is None:
            reply = await self.handler(command)
        await self._publish(command, reply)

    async def _publish(self, command: Command, reply: Reply) -> None:
        signed = self.signer.sign("reply", reply.id, reply.fields())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.command(command.id), self.instance, json.dumps(signed))
            pipe.expire(self.keys.command(command.id), RESULT_TTL)
            if command.reply_to:
                # invariant dict of unions, as in send()
                pipe.xadd(command.reply_to, signed, maxlen=REPLY_MAXLEN, approximate=True)  # type: ignore[arg-type]
                pipe.pexpire(command.reply_to, self.reply_ttl_ms, nx=True)
            await pipe.execute()

    async def _dead_letter(
        self, group: str, entry_id: str, fields: dict[str, str], reason: str, answer: bool = True
    ) -> None:
        """Move the entry to the dead letters (with why, who and when), tell its sender
        when it can be told safely, then acknowledge it. If the dead letter cannot be
        written the entry stays pending (and in the log): it is not lost. Entries that
        are not ours (``answer`` False: their signature failed) are logged rate-limited,
        so a flood of forgeries cannot fill the log (the dead letters are capped)."""
        report = self._rejected.warning if not answer else _log_error
        report(
            "command",
            "command entry %s on %s dead-lettered: %s (%.500r)",
            entry_id,
            self.stream,
            reason,
            fields,
        )
        if answer:
            await self._reply_failure(fields, reason)
        copy = json.dumps(fields)
        if len(copy) > DEAD_FIELDS_MAX:
            copy = json.dumps({"truncated": copy[:DEAD_FIELDS_MAX]})
        letter = {
            "entry": entry_id,
            "fields": copy,
            "reason": reason[:2000],
            "instance": self.instance,
            "at": now_iso(),
        }
        try:
            # invariant dict of unions, as in CommandSender.send()
            await self.redis.xadd(
                self.dead,
                letter,  # type: ignore[arg-type]
                maxlen=DEAD_MAXLEN,
                approximate=True,
            )
        except RedisError as exc:
            log.error("could not dead-letter %s, leaving it pending: %r", entry_id, exc)
            self._left_pending = True
            return
        await self._ack(group, entry_id)

    async def _reply_failure(self, fields: dict[str, str], error: str) -> None:
        """Answer ``ok=0`` to an entry that failed: in ``{p}:cmd:{id}`` when its id is one,
        on its ``reply_to`` only when that is a reply stream. Best effort."""
        request_id, reply_to = fields.get("id"), fields.get("reply_to")
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            return
        reply = Reply(request_id, self.env, self.instance, False, "error", error)
        signed = self.signer.sign("reply", request_id, reply.fields())
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.keys.command(request_id), self.instance, json.dumps(signed))
                pipe.expire(self.keys.command(request_id), RESULT_TTL)
                if isinstance(reply_to, str) and self.keys.is_reply_stream(reply_to):
                    # invariant dict of unions, as in CommandSender.send()
                    pipe.xadd(reply_to, signed, maxlen=REPLY_MAXLEN, approximate=True)  # type: ignore[arg-type]
                    pipe.pexpire(reply_to, self.reply_ttl_ms, nx=True)
                await pipe.execute()
        except RedisError as exc:
            log.warning("could not answer failed command %s: %r", request_id, exc)

    async def _ack(self, group: str, entry_id: str) -> None:
        try:
            await self.redis.xack(self.stream, group, entry_id)
        except RedisError as exc:
            log.warning("could not acknowledge %s: %r", entry_id, exc)
