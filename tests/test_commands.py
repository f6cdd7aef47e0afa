"""Command streams against real Redis, in process: delivery to every instance, replies,
idempotent redelivery, reclaim of a dead instance's leftovers, malformed entries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from nocosup.commands import Command, CommandConsumer, CommandSender, MalformedCommand, Reply
from nocosup.errors import CommandTimeout
from nocosup.heartbeat import Presence
from nocosup.redisconn import raise_if_cancelled
from nocosup.rediskeys import Keys, member
from nocosup.registry import AppRecord
from nocosup.remote import aggregate
from tests.cluster import wait_for
from tests.conftest import REDIS_URL

TTL = 5.0
#: A valid record of app "a" (commands carrying a record are checked).
REC = AppRecord("a", "A", ["e"], {}, {"connType": "new_database", "name": "a"}).to_json()


@pytest.fixture
async def redis(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(redis_prefix: str, request: pytest.FixtureRequest) -> Keys:
    return Keys(f"{redis_prefix}:cmd:{request.node.name}")


async def beat(redis: aioredis.Redis, keys: Keys, env: str, instance: str) -> None:
    await redis.set(keys.instance(env, instance), "{}", px=int(TTL * 1000))
    await redis.zadd(keys.instances, {member(env, instance): time.time() * 1000})


async def groups(redis: aioredis.Redis, stream: str) -> set[str]:
    """The consumer groups of ``stream`` (none while the stream does not exist)."""
    try:
        return {g["name"] for g in await redis.xinfo_groups(stream)}
    except ResponseError:
        return set()


async def have_groups(redis: aioredis.Redis, stream: str, *names: str) -> None:
    """Wait until consumers made their groups: only entries added after that reach them."""

    async def made() -> bool:
        return set(names) <= await groups(redis, stream)

    await wait_for(made)


async def stop(tasks: list[asyncio.Task[None]], consumers: list[CommandConsumer]) -> None:
    """Cancel the consumers' loops and wait (their blocked connection goes back to the
    pool), then wait for the commands they had started: the fixture closes the Redis
    client next, and a command task still running then would take a new connection that
    nothing closes (ResourceWarning: unclosed Connection, in whichever test runs the GC)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for consumer in consumers:
        await consumer.close()


class Recorder:
    """A handler that records what it ran and answers ok."""

    def __init__(self, env: str, instance: str) -> None:
        self.env = env
        self.instance = instance
        self.ran: list[str] = []

    async def __call__(self, command: Command) -> Reply:
        self.ran.append(command.id)
        return Reply(command.id, self.env, self.instance, True, "running")


def test_parse_rejects_what_is_not_a_command() -> None:
    good = Command("start", "a", REC).fields()
    assert Command.parse(good).app == "a"
    for bad in (
        {},
        {**good, "v": "9"},
        {**good, "action": "explode"},
        {**good, "record": "{nope"},
        {**good, "args": "[]"},
        {k: v for k, v in good.items() if k != "record"},
    ):
        with pytest.raises(MalformedCommand):
            Command.parse(bad)


def test_aggregate_prefers_the_status_that_needs_attention() -> None:
    assert aggregate([]) == "stopped"
    assert aggregate(["running", "stopped"]) == "running"
    assert aggregate(["running", "initializing"]) == "initializing"
    assert aggregate(["running", "error"]) == "error"


async def test_every_instance_gets_the_command_and_the_sender_waits_for_all(
    redis: aioredis.Redis, keys: Keys
) -> None:
    handlers = [Recorder("e", "i1"), Recorder("e", "i2")]
    consumers = []
    for h in handlers:
        await beat(redis, keys, "e", h.instance)
        consumers.append(
            CommandConsumer(redis, keys, "e", h.instance, h, Presence(redis, keys, TTL))
        )
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    sender = CommandSender(redis, keys, "sup", Presence(redis, keys, TTL))
    await sender.start()
    try:
        await have_groups(redis, keys.commands("e"), "i1", "i2")
        replies = await sender.send("e", Command("start", "a", REC), timeout=10)
        assert {r.instance for r in replies} == {"i1", "i2"}
        assert all(len(h.ran) == 1 for h in handlers)
        # nobody alive in another environment: no wait, no reply
        assert await sender.send("nobody", Command("ping", "a"), timeout=10) == []
    finally:
        await stop(tasks, consumers)
        await sender.close()


async def test_silent_instance_times_out_and_dead_one_is_not_waited_for(
    redis: aioredis.Redis, keys: Keys
) -> None:
    await beat(redis, keys, "e", "mute")
    sender = CommandSender(redis, keys, "sup", Presence(redis, keys, TTL))
    await sender.start()
    try:
        with pytest.raises(CommandTimeout, match="silent: mute"):
            await sender.send("e", Command("ping", "a"), timeout=0.5)
        # the instance dies while we wait: the wait ends (no reply, nobody left)
        stream = keys.commands("e")
        before = await redis.xlen(stream)
        task = asyncio.create_task(sender.send("e", Command("ping", "a"), timeout=10))

        async def sent() -> bool:
            return await redis.xlen(stream) > before

        # the command is out, so the sender counted 'mute' in and is waiting for it
        await wait_for(sent)
        await redis.delete(keys.instance("e", "mute"))
        assert await task == []
    finally:
        await sender.close()


async def test_redelivered_command_is_answered_not_rerun(redis: aioredis.Redis, keys: Keys) -> None:
    handler = Recorder("e", "i1")
    consumer = CommandConsumer(redis, keys, "e", "i1", handler, Presence(redis, keys, TTL))
    await beat(redis, keys, "e", "i1")
    command = Command("start", "a", REC, reply_to=keys.replies("sup"))
    await consumer._process("i1", "0-1", command.fields())
    await consumer._process("i1", "0-2", command.fields())
    assert handler.ran == [command.id]
    assert await redis.xlen(keys.replies("sup")) == 2
    stored = json.loads(await redis.hget(keys.command(command.id), "i1"))
    assert stored["ok"] == "1"


async def test_a_new_instance_reclaims_what_a_dead_one_left(
    redis: aioredis.Redis, keys: Keys
) -> None:
    stream = keys.commands("e")
    await redis.xgroup_create(stream, "dead", id="$", mkstream=True)
    command = Command("create", "a", REC, reply_to=keys.replies("sup"))
    await redis.xadd(stream, command.fields())
    # the dead instance read it and never acknowledged it
    await redis.xreadgroup("dead", "dead", {stream: ">"})
    assert (await redis.xpending(stream, "dead"))["pending"] == 1
    handler = Recorder("e", "fresh")
    await beat(redis, keys, "e", "fresh")
    consumer = CommandConsumer(redis, keys, "e", "fresh", handler, Presence(redis, keys, TTL))
    await consumer._ensure_group()
    await consumer.reclaim_dead()
    assert handler.ran == [command.id]
    assert "dead" not in {g["name"] for g in await redis.xinfo_groups(stream)}
    reply = (await redis.xrange(keys.replies("sup")))[0][1]
    assert reply["instance"] == "fresh" and reply["ok"] == "1"


async def test_malformed_entries_are_acknowledged_and_answered(
    redis: aioredis.Redis, keys: Keys
) -> None:
    handler = Recorder("e", "i1")
    await beat(redis, keys, "e", "i1")
    consumer = CommandConsumer(redis, keys, "e", "i1", handler, Presence(redis, keys, TTL))
    task = asyncio.create_task(consumer.run())
    try:
        stream = keys.commands("e")
        await have_groups(redis, stream, "i1")
        await redis.xadd(stream, {"junk": "1"})
        await redis.xadd(
            stream,
            {"v": "1", "id": "m1", "action": "nope", "app": "a", "reply_to": keys.replies("sup")},
        )
        for _ in range(50):
            info = (await redis.xinfo_groups(stream))[0]
            if info["pending"] == 0 and info["lag"] == 0:
                break
            await asyncio.sleep(0.05)
        assert info["pending"] == 0 and info["lag"] == 0
        assert handler.ran == []
        reply = (await redis.xrange(keys.replies("sup")))[0][1]
        assert reply["ok"] == "0" and "malformed" in reply["error"]
        assert not task.done()
    finally:
        await stop([task], [consumer])


async def test_commands_sent_while_redis_lost_the_group_are_not_skipped(
    redis: aioredis.Redis, keys: Keys
) -> None:
    handler = Recorder("e", "i1")
    await beat(redis, keys, "e", "i1")
    consumer = CommandConsumer(redis, keys, "e", "i1", handler, Presence(redis, keys, TTL))
    task = asyncio.create_task(consumer.run())
    try:
        stream = keys.commands("e")
        await have_groups(redis, stream, "i1")
        first = Command("ping", "a")
        await redis.xadd(stream, first.fields())

        async def ran(command: Command) -> bool:
            return command.id in handler.ran

        await wait_for(lambda: ran(first))
        # as after a Redis restart: the stream and its groups are gone, and a command
        # arrives before the consumer noticed. One transaction: the consumer cannot
        # re-create its group between the two, so a group re-created at '$' (new
        # entries only) would skip the second command.
        second = Command("ping", "a")
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(stream)
            pipe.xadd(stream, second.fields())
            await pipe.execute()
        await wait_for(lambda: ran(second))
        assert handler.ran == [first.id, second.id]
    finally:
        await stop([task], [consumer])


def test_parse_rejects_ids_names_and_records_that_do_not_fit() -> None:
    good = Command("start", "a", REC).fields()
    for bad, reason in (
        ({**good, "id": "../x"}, "request id"),
        ({**good, "id": "x" * 65}, "request id"),
        ({**good, "app": "A b"}, "app name"),
        ({**good, "app": "b"}, "record is of 'a'"),
        ({**good, "record": json.dumps({**REC, "version": "2"})}, "version"),
        ({**good, "record": json.dumps({**REC, "environments": "e"})}, "environments"),
    ):
        with pytest.raises(MalformedCommand, match=reason):
            Command.parse(bad)


class Exploding(Recorder):
    """Raises on the app named ``boom``."""

    async def __call__(self, command: Command) -> Reply:
        if command.app == "boom":
            raise RuntimeError("handler bug")
        return await super().__call__(command)


async def settled(redis: aioredis.Redis, stream: str) -> None:
    """Wait until every group of ``stream`` read and acknowledged everything."""
    for _ in range(200):
        groups = await redis.xinfo_groups(stream)
        if groups and all(g["pending"] == 0 and g["lag"] == 0 for g in groups):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{stream} never settled: {groups}")


async def dead_letters(redis: aioredis.Redis, keys: Keys) -> list[dict[str, str]]:
    return [fields for _id, fields in await redis.xrange(keys.dead("e"))]


async def test_poison_entries_go_to_the_dead_letters_and_the_consumer_goes_on(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """Finding 3: a reply_to naming a key of another type (here the cache's meta hash)
    killed the consumer; a handler that raises, or a reply stream of the wrong type, too."""
    handler = Exploding("e", "i1")
    await beat(redis, keys, "e", "i1")
    consumer = CommandConsumer(redis, keys, "e", "i1", handler, Presence(redis, keys, TTL))
    task = asyncio.create_task(consumer.run())
    stream = keys.commands("e")
    await redis.hset(keys.meta, "schema", "1")
    await redis.set(keys.replies("wrongtype"), "a string")
    try:
        await have_groups(redis, stream, "i1")
        poison = {"v": "1", "action": "ping", "app": "x", "id": "g5", "reply_to": keys.meta}
        await redis.xadd(stream, poison)
        crash = Command("start", "boom", {**REC, "name": "boom"}, reply_to=keys.replies("sup"))
        await redis.xadd(stream, crash.fields())
        bad_reply = Command("ping", "a", reply_to=keys.replies("wrongtype"))
        await redis.xadd(stream, bad_reply.fields())
        fine = Command("ping", "a", reply_to=keys.replies("sup"))
        await redis.xadd(stream, fine.fields())
        await settled(redis, stream)
        assert not task.done() and consumer.error is None
        assert await redis.hgetall(keys.meta) == {"schema": "1"}  # never written to
        letters = await dead_letters(redis, keys)
        assert len(letters) == 3
        reasons = {json.loads(x["fields"])["id"]: x["reason"] for x in letters}
        assert "is not a reply stream" in reasons["g5"]
        assert "processing failed: RuntimeError: handler bug" in reasons[crash.id]
        assert "WRONGTYPE" in reasons[bad_reply.id]
        assert all(x["instance"] == "i1" and x["at"] and x["entry"] for x in letters)
        # entries run concurrently: their dead letters come in any order
        by_id = {json.loads(x["fields"])["id"]: json.loads(x["fields"]) for x in letters}
        assert by_id["g5"] == poison
        # the crash was answered ok=0 on its (valid) reply stream; the good one ran
        replies = {f["id"]: f for _id, f in await redis.xrange(keys.replies("sup"))}
        assert replies[crash.id]["ok"] == "0" and "handler bug" in replies[crash.id]["error"]
        assert replies[fine.id]["ok"] == "1"
        # the poison's sender (if any) can still find the refusal by its id
        stored = json.loads(await redis.hget(keys.command("g5"), "i1"))
        assert stored["ok"] == "0" and "reply stream" in stored["error"]
    finally:
        await stop([task], [consumer])


async def test_a_poison_entry_left_by_a_dead_instance_does_not_kill_the_reclaimer(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """The repro's path: the worker was killed with the poison pending; its successor
    reclaims it at start (outside the per-entry tasks) and must go on."""
    stream = keys.commands("e")
    await redis.xgroup_create(stream, "dead", id="$", mkstream=True)
    await redis.hset(keys.meta, "schema", "1")
    await redis.xadd(
        stream, {"v": "1", "action": "ping", "app": "x", "id": "g5", "reply_to": keys.meta}
    )
    await redis.xreadgroup("dead", "dead", {stream: ">"})
    handler = Recorder("e", "fresh")
    await beat(redis, keys, "e", "fresh")
    consumer = CommandConsumer(redis, keys, "e", "fresh", handler, Presence(redis, keys, TTL))
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(100):
            if await redis.xlen(keys.dead("e")):
                break
            await asyncio.sleep(0.05)
        assert "is not a reply stream" in (await dead_letters(redis, keys))[0]["reason"]
        later = Command("ping", "a", reply_to=keys.replies("sup"))
        await redis.xadd(stream, later.fields())
        await settled(redis, stream)
        assert handler.ran == [later.id] and not task.done()
    finally:
        await stop([task], [consumer])


class FailsOnce(CommandConsumer):
    """A consumer whose start-up step raises the first time."""

    failed = False

    async def reclaim_dead(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("reclaim bug")
        await super().reclaim_dead()


async def test_the_consumer_loop_starts_over_after_an_exception(
    redis: aioredis.Redis, keys: Keys
) -> None:
    handler = Recorder("e", "i1")
    await beat(redis, keys, "e", "i1")
    consumer = FailsOnce(redis, keys, "e", "i1", handler, Presence(redis, keys, TTL))
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(100):
            if consumer.restarts and consumer.error is None:
                break
            await asyncio.sleep(0.05)
        assert consumer.restarts == 1
        command = Command("ping", "a", reply_to=keys.replies("sup"))
        await redis.xadd(keys.commands("e"), command.fields())
        await settled(redis, keys.commands("e"))
        assert handler.ran == [command.id]
    finally:
        await stop([task], [consumer])


def test_reply_streams_are_recognised() -> None:
    keys = Keys("p")
    assert keys.is_reply_stream(keys.replies("80eb498033b5"))
    for key in ("p:meta", "p:sup::replies", "q:sup:x:replies", "p:sup:a:b:replies", "p:apps"):
        assert not keys.is_reply_stream(key)


class Stuck(Recorder):
    """Never finishes a command (a start held up by a boot that never ends)."""

    async def __call__(self, command: Command) -> Reply:
        self.ran.append(command.id)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_close_cancels_commands_still_running_and_leaves_them_pending(
    redis: aioredis.Redis, keys: Keys
) -> None:
    """Nothing of a closed consumer may use Redis afterwards (its client closes next): a
    command still running past the grace is cancelled, unacknowledged, for a later
    instance to finish."""
    handler = Stuck("e", "i1")
    await beat(redis, keys, "e", "i1")
    consumer = CommandConsumer(redis, keys, "e", "i1", handler, Presence(redis, keys, TTL))
    task = asyncio.create_task(consumer.run())
    try:
        await have_groups(redis, keys.commands("e"), "i1")
        command = Command("ping", "a", reply_to=keys.replies("sup"))
        await redis.xadd(keys.commands("e"), command.fields())

        async def running() -> bool:
            return command.id in handler.ran

        await wait_for(running)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.close(grace=0.1)
    assert all(t.done() for t in consumer._tasks) and not consumer._tasks
    pending = await redis.xpending(keys.commands("e"), "i1")
    assert pending["pending"] == 1
    assert await redis.xlen(keys.replies("sup")) == 0


async def test_a_cancellation_swallowed_by_a_client_library_is_raised_again() -> None:
    """redis-py, cancelled in a blocking XREADGROUP, sometimes retried the read instead of
    letting CancelledError through: the consumer's loop then never stopped (1 run in 15).
    Loops call raise_if_cancelled() after every read and every caught error."""
    reached: list[str] = []

    async def swallows() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reached.append("swallowed")  # what the library did
        raise_if_cancelled()
        reached.append("went on")

    task = asyncio.create_task(swallows())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reached == ["swallowed"]
