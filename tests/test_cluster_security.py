"""Redis writers cannot steer the cluster (issue 8, finding 4) and a killed supervisor
leaves nothing behind (finding 10): every repro against real processes (a supervisor and
workers as uvicorn processes, real Redis, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from unittest import mock

import asyncpg
import pytest
import redis.asyncio as aioredis

from nocosup.signing import Signer
from tests.cluster import Cluster, wait_for
from tests.conftest import PG_DSN, REDIS_URL
from tests.redisserver import RedisServer
from tests.servers import NocosupServer, ServerFactory
from tests.test_admin_api import assert_error
from tests.test_tenants import create

SECRET = "cluster-secret-for-tests-0123456789abcdef"
ECHO = {"test": {"echo": True}, "startMode": "with_supervisor"}


@pytest.fixture
async def r() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


def sup(cluster: Cluster) -> NocosupServer:
    assert cluster.supervisor is not None
    return cluster.supervisor


async def signed_cluster(
    servers: ServerFactory, pg_env: dict[str, str], prefix: str, secret: str | None, **sup: str
) -> Cluster:
    cluster = Cluster(servers, pg_env, prefix, REDIS_URL, secret=secret)
    cluster.start_supervisor(**sup)
    cluster.start_worker("env_a")
    async with cluster.supervisor.admin() as c:  # type: ignore[union-attr]
        await cluster.wait_environments(c, {"env_a": 1})
    return cluster


def log(cluster: Cluster) -> str:
    return sup(cluster).log.read_text(errors="replace")


class Capture:
    """A TCP server that counts who connects to it (and answers nothing useful)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Capture:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\ncaptured")
        await writer.drain()
        writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def forged_requests(
    cluster: Cluster, r: aioredis.Redis, capture: Capture, done: Callable[[], bool]
) -> list[str]:
    """Rewrite env_a's proxy_url to the capture server, again and again (as the attacker
    of the repro did), asking for the app meanwhile: at least 8 rounds, then until
    ``done()`` (at most 60 rounds); the bodies the client got back."""
    bodies: list[str] = []
    async with sup(cluster).client() as c:
        for rounds in range(60):
            if rounds >= 8 and done():
                break
            await r.hset(f"{cluster.prefix}:env:env_a", "proxy_url", capture.url)
            # the worker writes its own URL back with its next beat (every 0.5 s): ask
            # during the rest of the beat, while the watcher (every 0.25 s) may hold it
            for _ in range(5):
                resp = await c.get("/apps/shop/", headers={"Authorization": "Bearer t0ken"})
                bodies.append(resp.text)
                await asyncio.sleep(0.1)
    return bodies


# --- forged registration ---------------------------------------------------------------


async def test_forged_proxy_url_is_ignored_with_a_cluster_secret(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, r: aioredis.Redis
) -> None:
    cluster = await signed_cluster(servers, pg_env, redis_prefix, SECRET)
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
    seen = "ignoring the registration of env_a in Redis: bad signature"
    async with Capture() as capture:
        # until the supervisor has read (and refused) a forged registration
        bodies = await forged_requests(cluster, r, capture, lambda: seen in log(cluster))
    assert seen in log(cluster)
    assert capture.connections == 0
    assert all(json.loads(b)["root_path"] == "/apps/shop" for b in bodies), bodies


async def test_without_a_secret_a_redis_writer_steers_the_proxy(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, r: aioredis.Redis
) -> None:
    """The control: the same forgery without a secret reaches the capture server (what
    the secret exists for; docs/security.md says so), and both processes warned."""
    cluster = await signed_cluster(servers, pg_env, redis_prefix, "")
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
    async with Capture() as capture:
        bodies = await forged_requests(cluster, r, capture, lambda: capture.connections > 0)
    assert capture.connections > 0 and "captured" in bodies
    assert "NOCOSUP_CLUSTER_SECRET is not set" in sup(cluster).tail(400)
    assert "NOCOSUP_CLUSTER_SECRET is not set" in cluster.workers["env_a"].tail(400)


# --- forged commands -------------------------------------------------------------------


@pytest.fixture
async def victim(pg_env: dict[str, str]) -> AsyncIterator[str]:
    """A PostgreSQL database that is no app's: a forged remove must not drop it."""
    name = f"{pg_env['DB_DATABASE']}_victim"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield name
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def forged_remove(cluster: Cluster, app: str, database: str, request_id: str) -> dict[str, str]:
    record = {
        "name": app,
        "title": app,
        "environments": ["env_a"],
        "options": {"dbConnType": "new_database"},
        "database": {"connType": "new_database", "name": database, "schema": None},
    }
    return {
        "v": "1",
        "id": request_id,
        "action": "remove",
        "app": app,
        "record": json.dumps(record),
        "args": json.dumps({"drop_database": True}),
        "sent_at": f"{time.time():.6f}",
        "reply_to": f"{cluster.prefix}:sup:attacker:replies",
    }


async def dead_letters(r: aioredis.Redis, cluster: Cluster, count: int) -> list[dict[str, str]]:
    key = f"{cluster.prefix}:env:env_a:dead"

    async def enough() -> list[dict[str, str]] | None:
        entries = await r.xrange(key)
        return [f for _id, f in entries] if len(entries) >= count else None

    return await wait_for(enough)


@pytest.mark.parametrize("secret", ["", SECRET], ids=["unsigned", "signed"])
async def test_forged_remove_never_drops_another_database(
    servers: ServerFactory,
    pg_env: dict[str, str],
    redis_prefix: str,
    r: aioredis.Redis,
    victim: str,
    secret: str,
) -> None:
    """Even a command that carries a valid signature (a bug, a leaked secret) cannot make
    a worker drop a database other than the one it derives for the app itself."""
    cluster = await signed_cluster(servers, pg_env, redis_prefix, secret)
    fields = forged_remove(cluster, "x", victim, "forged1")
    signed = Signer(secret or None, "attacker").sign("command", "env_a", fields)
    await r.xadd(f"{cluster.prefix}:env:env_a:cmds", signed)  # type: ignore[arg-type]
    (letter,) = await dead_letters(r, cluster, 1)
    assert letter["reason"].startswith("refused: the record of 'x' names database"), letter
    assert victim in letter["reason"]
    assert await database_exists(victim)
    # the worker goes on: a real app is created and removed with its own database
    async with sup(cluster).admin() as c:
        await create(c, "real", environments=["env_a"])
        own = f"{pg_env['DB_DATABASE']}_app_real"
        assert await database_exists(own)
        gone = await c.delete("/api/apps/real", params={"drop_database": "true"})
        assert gone.status_code == 200, gone.text
        assert not await database_exists(own)
    assert await database_exists(victim)


async def test_unsigned_badly_signed_and_stale_commands_are_dead_lettered(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, r: aioredis.Redis
) -> None:
    cluster = await signed_cluster(servers, pg_env, redis_prefix, SECRET)
    stream = f"{cluster.prefix}:env:env_a:cmds"
    reply_to = f"{cluster.prefix}:sup:attacker:replies"

    def ping(request_id: str) -> dict[str, str]:
        return {"v": "1", "id": request_id, "action": "ping", "app": "x", "reply_to": reply_to}

    await r.xadd(stream, ping("unsigned1"))  # type: ignore[arg-type]
    bad = Signer("another-secret-of-32-characters-or-more", "attacker").sign(
        "command", "env_a", ping("badsig1")
    )
    await r.xadd(stream, bad)  # type: ignore[arg-type]
    with mock.patch("nocosup.signing.time.time", return_value=time.time() - 3600):
        stale = Signer(SECRET, "attacker").sign("command", "env_a", ping("stale1"))
    await r.xadd(stream, stale)  # type: ignore[arg-type]
    # a good command copied to another environment's stream fails too (the context)
    elsewhere = Signer(SECRET, "attacker").sign("command", "env_b", ping("moved1"))
    await r.xadd(stream, elsewhere)  # type: ignore[arg-type]
    # and a good one, sent twice: the copy is a replay
    good = Signer(SECRET, "attacker").sign("command", "env_a", ping("good1"))
    await r.xadd(stream, good)  # type: ignore[arg-type]
    await r.xadd(stream, good)  # type: ignore[arg-type]
    # a signed entry is still checked as before: a reply_to that is no reply stream
    poison = {**ping("poison1"), "reply_to": f"{cluster.prefix}:meta"}
    await r.xadd(stream, Signer(SECRET, "x").sign("command", "env_a", poison))  # type: ignore[arg-type]
    letters = await dead_letters(r, cluster, 6)
    reasons = {json.loads(f["fields"])["id"]: f["reason"] for f in letters}
    assert reasons["unsigned1"] == "rejected: unsigned (NOCOSUP_CLUSTER_SECRET is set)"
    assert reasons["badsig1"] == "rejected: bad signature"
    assert reasons["stale1"].startswith("rejected: stale: signed 36"), reasons
    assert reasons["moved1"] == "rejected: bad signature"
    assert reasons["good1"].startswith("rejected: replayed command id 'good1'")
    assert reasons["poison1"].startswith("malformed command: reply_to"), reasons
    # forgeries are logged rate-limited (one line per 10 s), not one line each
    worker_log = cluster.workers["env_a"].log.read_text(errors="replace")
    assert 1 <= worker_log.count("dead-lettered: rejected:") < 5
    # the good one was answered once; nothing forged was answered at all
    answers = await r.hgetall(f"{cluster.prefix}:cmd:good1")
    assert [json.loads(v)["status"] for v in answers.values()] == ["pong"]
    for forged in ("unsigned1", "badsig1", "stale1", "moved1"):
        assert not await r.exists(f"{cluster.prefix}:cmd:{forged}")
    async with sup(cluster).admin() as c:
        env = (await c.get("/api/environments/env_a")).json()
        assert env["dead_letters"]["count"] == 6
        # commands from the supervisor still flow
        await create(c, "after", environments=["env_a"], options=ECHO)
        assert (await c.get("/apps/after/")).status_code == 200


async def test_forged_replies_statuses_and_heartbeats_are_ignored(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, r: aioredis.Redis
) -> None:
    cluster = await signed_cluster(servers, pg_env, redis_prefix, SECRET)
    p = cluster.prefix
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
        # a forged status of the live instance: skipped (and repaired by the worker)
        (instance,) = (await c.get("/api/environments/env_a")).json()["instances"]
        await r.hset(
            f"{p}:status:shop",
            f"env_a/{instance}",
            json.dumps({"status": "error", "error": "forged", "at": "2026-01-01T00:00:00Z"}),
        )
        app = (await c.get("/api/apps/shop")).json()
        assert app["statuses"]["env_a"] != "error" and not app["errors"], app

        async def running_again() -> bool:
            app = (await c.get("/api/apps/shop")).json()
            assert app["statuses"]["env_a"] != "error" and not app["errors"], app
            return bool(app["statuses"] == {"env_a": "running"})

        await wait_for(running_again)
        # a forged heartbeat of a made-up instance: not live, so commands do not wait
        # for it (a stop answers at once, not after NOCOSUP_COMMAND_TIMEOUT)
        await r.set(
            f"{p}:env:env_a:inst:ghost",
            json.dumps({"instance": "ghost", "environment": "env_a"}),
            px=60_000,
        )
        await r.zadd(f"{p}:instances", {"env_a/ghost": time.time() * 1000})
        env = (await c.get("/api/environments/env_a")).json()
        assert env["instances"] == [instance], env
        stopped = await c.post("/api/apps/shop/stop")
        assert stopped.status_code == 200, stopped.text
        # a forged reply on the supervisor's reply stream does not answer a command
        (sup_stream,) = [k async for k in r.scan_iter(match=f"{p}:sup:*:replies")]
        forged = {"id": "zzz", "env": "env_a", "instance": instance, "ok": "1", "status": "x"}
        await r.xadd(sup_stream, forged)  # type: ignore[arg-type]

    async def logged() -> bool:
        return "ignoring a reply to zzz that does not verify: unsigned" in sup(cluster).tail(400)

    await wait_for(logged)
    log = sup(cluster).tail(400)
    assert "ignoring the status shop|env_a/" in log
    assert "ignoring the heartbeat of env_a/ghost" in log


# --- allowed upstreams -----------------------------------------------------------------


async def test_an_environment_outside_allowed_upstreams_is_not_routed_to(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = await signed_cluster(
        servers, pg_env, redis_prefix, SECRET, NOCOSUP_ALLOWED_UPSTREAMS="10.0.0.0/8,worker:80"
    )
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
        resp = await c.get("/apps/shop/")
        assert_error(resp, 503, "UPSTREAM_NOT_ALLOWED")
        assert "127.0.0.1:" in resp.json()["error"]["message"]
        assert "env_a" in resp.json()["error"]["message"]
        asked = await c.get("/apps/shop/", headers={"X-Nocosup-Environment": "env_a"})
        assert_error(asked, 503, "UPSTREAM_NOT_ALLOWED")
    assert "not routing to environment env_a" in sup(cluster).tail(200)


async def test_an_environment_inside_allowed_upstreams_is_routed_to(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str
) -> None:
    cluster = await signed_cluster(
        servers, pg_env, redis_prefix, SECRET, NOCOSUP_ALLOWED_UPSTREAMS="10.0.0.0/8, 127.0.0.1"
    )
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
        assert (await c.get("/apps/shop/")).status_code == 200
    assert "NOCOSUP_ALLOWED_UPSTREAMS is not set" not in sup(cluster).tail(200)


# --- Redis AUTH/ACL and TLS ------------------------------------------------------------

PASSWORD = "redis-pass-Zq81"


@pytest.fixture
def acl_redis(tmp_path: Path, servers: ServerFactory) -> Iterator[RedisServer]:
    """A private Redis where the default user is off and only ACL user ``nocosup`` works
    (the test's servers are stopped before it)."""
    server = RedisServer(
        tmp_path,
        extra=[
            "--user",
            "default",
            "off",
            "--user",
            "nocosup",
            "on",
            f">{PASSWORD}",
            "~*",
            "&*",
            "+@all",
        ],
    )
    with server, servers:
        yield server


async def test_a_cluster_runs_on_a_redis_with_an_acl_user(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, acl_redis: RedisServer
) -> None:
    url = f"redis://nocosup:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    cluster = Cluster(servers, pg_env, redis_prefix, url, secret=SECRET)
    cluster.start_supervisor()
    cluster.start_worker("env_a")
    async with sup(cluster).admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "shop", environments=["env_a"], options=ECHO)
        assert (await c.get("/apps/shop/")).status_code == 200
        assert PASSWORD not in (await c.get("/api/environments")).text
    for server in (sup(cluster), cluster.workers["env_a"]):
        assert PASSWORD not in server.tail(1000)


async def test_a_wrong_redis_password_stops_the_start_without_showing_it(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, acl_redis: RedisServer
) -> None:
    wrong = "not-the-password-9"
    url = f"redis://nocosup:{wrong}@127.0.0.1:{acl_redis.port}/0"
    cluster = Cluster(servers, pg_env, redis_prefix, url, secret=SECRET)
    with pytest.raises(RuntimeError) as failed:
        cluster.start_supervisor()
    assert "APP_SUPERVISOR_REDIS_URL: cannot reach Redis at redis://nocosup:***@127.0.0.1" in str(
        failed.value
    )
    assert wrong not in str(failed.value) and "Traceback" not in str(failed.value)


@pytest.fixture
def tls_redis(tmp_path: Path, servers: ServerFactory) -> Iterator[tuple[RedisServer, Path]]:
    """A private Redis that speaks only TLS, with a self-signed certificate for 127.0.0.1
    (the test's servers are stopped before it)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = RedisServer(tmp_path, tls=(cert, key))
    with server, servers:
        yield server, cert


async def test_a_cluster_runs_on_a_tls_redis(
    servers: ServerFactory,
    pg_env: dict[str, str],
    redis_prefix: str,
    tls_redis: tuple[RedisServer, Path],
) -> None:
    server, cert = tls_redis
    assert server.url.startswith("rediss://")
    cluster = Cluster(servers, pg_env, redis_prefix, server.url, secret=SECRET)
    cluster.start_supervisor(NOCOSUP_REDIS_CA_FILE=str(cert))
    # the worker names its CA in the URL instead (redis-py's ssl_ca_certs parameter)
    cluster.start_worker(
        "env_a",
        APP_SUPERVISOR_REDIS_URL=f"{server.url}?ssl_ca_certs={cert}",
        APP_COMMAND_REDIS_URL=f"{server.url}?ssl_ca_certs={cert}",
    )
    async with sup(cluster).admin() as c:
        await cluster.wait_environments(c, {"env_a": 1})
        await create(c, "shop", environments=["env_a"], options=ECHO)
        assert (await c.get("/apps/shop/")).status_code == 200


async def test_a_tls_redis_with_an_unknown_ca_is_refused(
    servers: ServerFactory,
    pg_env: dict[str, str],
    redis_prefix: str,
    tls_redis: tuple[RedisServer, Path],
) -> None:
    server, _cert = tls_redis
    cluster = Cluster(servers, pg_env, redis_prefix, server.url, secret=SECRET)
    with pytest.raises(RuntimeError) as failed:
        cluster.start_supervisor()
    assert "cannot reach Redis at rediss://127.0.0.1" in str(failed.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value) or "certificate" in str(failed.value)


# --- reply streams of a killed supervisor ----------------------------------------------


async def test_a_killed_supervisors_reply_stream_expires(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, r: aioredis.Redis
) -> None:
    cluster = await signed_cluster(servers, pg_env, redis_prefix, SECRET)
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
    streams = [k async for k in r.scan_iter(match=f"{cluster.prefix}:sup:*:replies")]
    assert len(streams) == 1
    (stream,) = streams
    assert await r.xlen(stream) >= 1
    # alive, the owner keeps renewing the expiry (6 heartbeat intervals: 3 s here)
    assert 0 < await r.pttl(stream) <= 3000
    sup(cluster).stop(signal.SIGKILL)

    async def gone() -> bool:
        return not await r.exists(stream)

    await wait_for(gone)
    # a new supervisor works and has a stream of its own
    cluster.start_supervisor()
    async with sup(cluster).admin() as c:
        await create(c, "two", environments=["env_a"], options=ECHO)
    again = [k async for k in r.scan_iter(match=f"{cluster.prefix}:sup:*:replies")]
    assert again and stream not in again


async def test_a_cleanly_stopped_supervisor_deletes_its_reply_stream(
    servers: ServerFactory, pg_env: dict[str, str], redis_prefix: str, r: aioredis.Redis
) -> None:
    cluster = await signed_cluster(servers, pg_env, redis_prefix, "")
    async with sup(cluster).admin() as c:
        await create(c, "shop", environments=["env_a"], options=ECHO)
    (stream,) = [k async for k in r.scan_iter(match=f"{cluster.prefix}:sup:*:replies")]
    sup(cluster).stop()
    assert not await r.exists(stream)
