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
from nocosup.rediskeys import Keys, member
from nocosup.remote import aggregate
from tests.cluster import wait_for
from tests.conftest import REDIS_URL

TTL = 5.0


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
    good = Command("start", "a", {"name": "a"}).fields()
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
        replies = await sender.send("e", Command("start", "a", {"name": "a"}), timeout=10)
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
    command = Command("start", "a", {"name": "a"}, reply_to=keys.replies("sup"))
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
    command = Command("create", "a", {"name": "a"}, reply_to=keys.replies("sup"))
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
