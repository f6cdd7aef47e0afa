"""The command path's cost: "start" of an already-running app on a Redis worker environment.

One deployment runs for the whole run (Redis at ``--redis-url``, a prefix of its own whose
keys are removed at the end): a supervisor (APP_PROCESS_ADAPTER=remote, SQLite registry in
a temp dir) and one worker environment, both ``nocosup serve`` pinned to CPU 1; this
script and wrk run on CPU 0 (``--no-pin``: the scheduler decides; Redis is never pinned).
App ``bench`` is created on the worker and started once; then, in rounds:

* sequential round trips timed in this process, one call after another:
  - ``redis PING``: one Redis round trip on the same client (the floor of everything);
  - ``presence check``: ``Presence.instances`` (what ``CommandSender.send`` asks first);
  - ``bare request/reply``: the pattern of perf-baseline.md section 4 (iii) and nothing
    else: XADD to a worker stream, a one-file worker process (CPU 1) XADDs the reply to
    our reply stream, one reader task resolves waiters by id;
  - ``nocosup ping`` and ``nocosup start``: ``CommandSender.send`` (with ``Presence``, as
    the supervisor builds it) of ``Command("ping")`` and ``Command("start", app, record)``
    to the worker, awaiting its reply; ``start`` carries the record from the config cache;
* 32 in flight for ``--duration`` seconds: the bare pattern and ``nocosup start``;
* the admin API: ``POST /api/apps/bench/start`` with wrk at 1 and 8 connections, to show
  the HTTP, registry and status-read overhead on top of the command.

Goal: the ``start`` command's sequential p50 <= 2 ms. Printed: per-round medians and
ranges of p50/p99, commands/s, and the CPU µs per command of the worker (and of the
supervisor for the admin API), next to the reference figures of perf-baseline.md.

    python bench/commands.py [--rounds 3] [--samples 1000] [--duration 4] [--no-pin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from common import (
    _WRK_LUA,  # the percentile hook every wrk run here uses; POST needs one more line
    DEFAULT_REDIS_URL,
    PYTHON,
    Admin,
    Load,
    LoadResult,
    ServerProcess,
    Workspace,
    _wrk_result,
    check_fast_loop,
    clean_env,
    fmt,
    machine_line,
    median,
    percentile,
    pin_self,
    purge_redis,
    redis_prefix,
    require_fast_uvicorn,
    require_redis,
    require_wrk,
    rotations,
    supervisor_server,
    table,
    worker_server,
)
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from nocosup.appcache import AppCache
from nocosup.commands import Command, CommandSender
from nocosup.config import Settings
from nocosup.heartbeat import Presence, heartbeat_ttl
from nocosup.redisconn import connect_redis
from nocosup.rediskeys import Keys
from nocosup.registry import AppRecord

APP = "bench"
ENV = "benchenv"
GOAL_P50_MS = 2.0
IN_FLIGHT = 32
#: perf-baseline.md section 4 (iii): the reply-stream request/reply pattern measured by
#: redis_bench.py on this machine, unpinned (median of 3 passes). Another run, another
#: placement: for orientation only; the "bare" rows here are the same-run comparison.
REFERENCE = {
    "seq_p50": 1.17,
    "seq_p99": 8.1,
    "flight_p50": 10.6,
    "flight_p99": 32.7,
    "flight_rps": 2807.0,
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument(
        "--samples", type=int, default=1000, help="sequential calls per series and round (1000)"
    )
    p.add_argument(
        "--duration", type=float, default=4, help="seconds per in-flight and wrk run (4)"
    )
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"({DEFAULT_REDIS_URL})")
    p.add_argument("--no-admin", action="store_true", help="skip the admin API part")
    p.add_argument("--no-pin", action="store_true", help="do not pin clients and servers")
    p.add_argument("--log-level", default="warning", help="servers' --log-level (default warning)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    p.add_argument("--floor-worker", nargs=2, metavar=("URL", "PREFIX"), help=argparse.SUPPRESS)
    return p.parse_args()


# --- the bare request/reply pattern ---------------------------------------------------------


def _floor_keys(prefix: str) -> tuple[str, str]:
    return f"{prefix}:floor:requests", f"{prefix}:floor:replies"


async def _floor_group(redis: Redis, stream: str) -> None:
    """Both ends create the group (whichever comes first), from the stream's start."""
    with contextlib.suppress(ResponseError):  # BUSYGROUP: the other end was first
        await redis.xgroup_create(stream, "floor", id="0", mkstream=True)


async def floor_worker(url: str, prefix: str) -> None:
    """The other end of :class:`BareRequestReply` (run in its own process): read the
    request stream in a consumer group, XADD each reply, XACK."""
    requests, _ = _floor_keys(prefix)
    redis = Redis.from_url(url, decode_responses=True)
    await _floor_group(redis, requests)
    while True:
        batches: Any = await redis.xreadgroup("floor", "w", {requests: ">"}, count=100, block=2000)
        for _stream, entries in batches or []:
            for entry_id, fields in entries:
                await redis.xadd(
                    fields["reply_to"], {"id": fields["id"]}, maxlen=10_000, approximate=True
                )
                await redis.xack(requests, "floor", entry_id)


class BareRequestReply:
    """perf-baseline.md section 4 (iii) with nothing else: no presence check, no result
    hash, no handler; the floor under nocosup's command path on the same run."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.requests, self.replies = _floor_keys(prefix)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await _floor_group(self.redis, self.requests)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def request(self, timeout: float = 10) -> None:
        request_id = uuid.uuid4().hex
        future = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        try:
            await self.redis.xadd(
                self.requests,
                {"id": request_id, "reply_to": self.replies},
                maxlen=10_000,
                approximate=True,
            )
            await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)

    async def _read(self) -> None:
        last = "0-0"
        while True:
            batches: Any = await self.redis.xread({self.replies: last}, count=500, block=2000)
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id
                    future = self._waiting.get(fields.get("id", ""))
                    if future is not None and not future.done():
                        future.set_result(None)


def start_floor_worker(ws: Workspace, url: str, prefix: str, cpus: str | None) -> ServerProcess:
    """The floor worker as a process of the workspace (stopped by PID with the servers)."""
    argv = [PYTHON, str(Path(__file__).resolve()), "--floor-worker", url, prefix]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    server = ServerProcess("floor-worker", argv, clean_env(), 0, ws.dir / "floor-worker.log")
    with server.log_path.open("ab") as out:
        server.proc = subprocess.Popen(argv, env=server.env, stdout=out, stderr=subprocess.STDOUT)
    ws.servers.append(server)
    return server


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Series:
    """Latencies (ms) of one series in one round, and CPU seconds spent on it."""

    latencies: list[float]
    seconds: float
    own_cpu: float
    remote_cpu: float | None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def per_call_us(self, cpu: float | None) -> float | None:
        return None if cpu is None or not self.latencies else cpu / len(self.latencies) * 1e6


Call = Callable[[], Awaitable[None]]


async def sequential(call: Call, n: int, remote: ServerProcess | None) -> Series:
    """``n`` calls one after another, each timed."""
    latencies = []
    r0 = remote.cpu_seconds() if remote else 0.0
    c0, began = time.process_time(), time.perf_counter()
    for _ in range(n):
        t = time.perf_counter_ns()
        await call()
        latencies.append((time.perf_counter_ns() - t) / 1e6)
    seconds, own = time.perf_counter() - began, time.process_time() - c0
    return Series(latencies, seconds, own, remote.cpu_seconds() - r0 if remote else None)


async def in_flight(
    call: Call, duration: float, remote: ServerProcess | None, width: int = IN_FLIGHT
) -> Series:
    """``width`` loops calling back to back for ``duration`` seconds."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def loop() -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter_ns()
            await call()
            latencies.append((time.perf_counter_ns() - t) / 1e6)

    r0 = remote.cpu_seconds() if remote else 0.0
    c0, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(width)))
    seconds, own = time.perf_counter() - began, time.process_time() - c0
    return Series(latencies, seconds, own, remote.cpu_seconds() - r0 if remote else None)


def wrk_post(
    url: str, token: str, connections: int, duration: float, server: ServerProcess
) -> LoadResult:
    """wrk with POST (common.run_wrk only GETs), same percentile hook and result parsing."""
    wrk = require_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write('wrk.method = "POST"\n' + _WRK_LUA)
        script = fh.name
    try:
        cpu0 = server.cpu_seconds()
        argv = [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            script,
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        cpu = server.cpu_seconds() - cpu0
    finally:
        os.unlink(script)
    return _wrk_result(Load(url, server), proc.returncode, proc.stdout, proc.stderr, cpu)


@dataclass
class Results:
    """Every round's figures, by series name."""

    seq: dict[str, list[Series]] = field(default_factory=dict)
    flight: dict[str, list[Series]] = field(default_factory=dict)
    admin: dict[int, list[tuple[LoadResult, float]]] = field(default_factory=dict)


# --- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace, ws: Workspace, prefix: str) -> Results:
    cpus = None if args.no_pin else "1"
    level = args.log_level
    sup = ws.start(supervisor_server(ws.dir, args.redis_url, prefix, cpus=cpus, log_level=level))
    worker = ws.start(
        worker_server(ws.dir, args.redis_url, prefix, ENV, cpus=cpus, log_level=level)
    )
    check_fast_loop(sup, worker)
    admin = Admin(sup)
    admin.wait_environments({ENV: 1})
    admin.create_app(APP, environments=[ENV])
    admin.start_app(APP)
    floor_proc = start_floor_worker(ws, args.redis_url, prefix, cpus)

    keys = Keys(prefix)
    redis = await connect_redis(args.redis_url, "--redis-url")
    presence = Presence(redis, keys, heartbeat_ttl(Settings.from_env(sup.env)))
    sender = CommandSender(redis, keys, f"bench-{uuid.uuid4().hex[:8]}", presence)
    floor = BareRequestReply(redis, prefix)
    cached: AppRecord | None = await AppCache(redis, keys).get(APP)
    if cached is None:
        raise RuntimeError(f"app {APP!r} is not in the config cache")
    record = cached.to_json()
    await sender.start()
    await floor.start()

    async def ping_redis() -> None:
        await redis.ping()

    async def presence_check() -> None:
        if not await presence.instances(ENV):
            raise RuntimeError(f"environment {ENV} has no live instance")

    async def command(action: str) -> None:
        cmd = Command(action, APP, record if action != "ping" else None)
        replies = await sender.send(ENV, cmd, timeout=10)
        want = "pong" if action == "ping" else "running"
        if len(replies) != 1 or not replies[0].ok or replies[0].status != want:
            raise RuntimeError(f"{action} answered {replies}")

    async def nocosup_ping() -> None:
        await command("ping")

    async def nocosup_start() -> None:
        await command("start")

    series: dict[str, tuple[Call, ServerProcess | None]] = {
        "redis PING": (ping_redis, None),
        "presence check": (presence_check, None),
        "bare request/reply": (floor.request, floor_proc),
        "nocosup ping command": (nocosup_ping, worker),
        "nocosup start command": (nocosup_start, worker),
    }
    flights = {
        "bare request/reply": (floor.request, floor_proc),
        "nocosup start command": (nocosup_start, worker),
    }
    results = Results()
    token = sup.env["NOCOSUP_ADMIN_TOKEN"]
    start_url = f"{sup.url}/api/apps/{APP}/start"
    try:
        print("# warming up", flush=True)
        for call, _ in series.values():
            await sequential(call, 200, None)
        for call, _ in flights.values():
            await in_flight(call, 1, None)
        if not args.no_admin:
            await asyncio.to_thread(wrk_post, start_url, token, 8, 1, sup)
        for r, names in rotations(list(series), args.rounds):
            began = time.perf_counter()
            for name in names:
                call, remote = series[name]
                results.seq.setdefault(name, []).append(
                    await sequential(call, args.samples, remote)
                )
            for name in names:
                if name in flights:
                    call, remote = flights[name]
                    results.flight.setdefault(name, []).append(
                        await in_flight(call, args.duration, remote)
                    )
            if not args.no_admin:
                for conns in (1, 8) if r % 2 == 0 else (8, 1):
                    w0 = worker.cpu_seconds()
                    load = await asyncio.to_thread(
                        wrk_post, start_url, token, conns, args.duration, sup
                    )
                    if load.failed:
                        raise RuntimeError(f"admin start failed: {load.errors}")
                    worker_us = (worker.cpu_seconds() - w0) / max(load.requests, 1) * 1e6
                    results.admin.setdefault(conns, []).append((load, worker_us))
            p50 = percentile(results.seq["nocosup start command"][-1].latencies, 50)
            print(
                f"# round {r + 1}/{args.rounds}: {time.perf_counter() - began:.0f} s, "
                f"start command p50 {p50:.2f} ms",
                flush=True,
            )
    finally:
        await sender.close()
        await floor.close()
        await redis.aclose()
        admin.close()
    return results


# --- output ----------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 2) -> str:
    """``median [min..max]`` over rounds."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(median(values), digits)} [{fmt(min(values), digits)}..{fmt(max(values), digits)}]"


def report(args: argparse.Namespace, res: Results) -> None:
    print(
        f"\n## Sequential round trips ({args.samples} per series and round, {args.rounds} rounds)"
    )
    print("median over rounds [min..max]; CPU µs per call of this process and of the far end\n")
    rows = []
    for name, runs in res.seq.items():
        rows.append(
            [
                name,
                spread([percentile(s.latencies, 50) for s in runs]),
                spread([percentile(s.latencies, 90) for s in runs]),
                spread([percentile(s.latencies, 99) for s in runs]),
                fmt(median(max(s.latencies) for s in runs), 1),
                fmt(median(s.per_call_us(s.own_cpu) for s in runs), 0),
                fmt(median(s.per_call_us(s.remote_cpu) for s in runs), 0),
            ]
        )
    print(
        table(["series", "p50 ms", "p90 ms", "p99 ms", "max ms", "sender µs", "far end µs"], rows)
    )

    print(f"\n## {IN_FLIGHT} in flight for {args.duration:g} s\n")
    rows = []
    for name, runs in res.flight.items():
        rows.append(
            [
                name,
                spread([s.rate for s in runs], 0),
                spread([percentile(s.latencies, 50) for s in runs]),
                spread([percentile(s.latencies, 99) for s in runs]),
                fmt(median(s.per_call_us(s.own_cpu) for s in runs), 0),
                fmt(median(s.per_call_us(s.remote_cpu) for s in runs), 0),
            ]
        )
    print(table(["series", "per s", "p50 ms", "p99 ms", "sender µs", "far end µs"], rows))

    if res.admin:
        print(f"\n## Admin API: POST /api/apps/{APP}/start (wrk, {args.duration:g} s per run)\n")
        rows = []
        for conns, admin_runs in sorted(res.admin.items()):
            loads = [x for x, _ in admin_runs]
            rows.append(
                [
                    f"wrk -c{conns}",
                    spread([x.rps for x in loads], 0),
                    spread([x.p50_ms for x in loads]),
                    spread([x.p99_ms for x in loads]),
                    fmt(median(x.server_cpu_us for x in loads), 0),
                    fmt(median(w for _, w in admin_runs), 0),
                ]
            )
        print(
            table(
                ["concurrency", "req/s", "p50 ms", "p99 ms", "supervisor µs/req", "worker µs/req"],
                rows,
            )
        )

    start = res.seq["nocosup start command"]
    bare = res.seq["bare request/reply"]
    p50s = [percentile(s.latencies, 50) for s in start]
    met = median(p50s) <= GOAL_P50_MS
    flight_start = res.flight["nocosup start command"]
    flight_bare = res.flight["bare request/reply"]
    print("\n## Summary: start of an already-running app\n")
    rows = [
        [
            "start command p50, sequential",
            f"<= {GOAL_P50_MS:g} ms",
            spread(p50s),
            spread([percentile(s.latencies, 50) for s in bare]),
            fmt(REFERENCE["seq_p50"], 2),
            "met" if met else "MISSED",
        ],
        [
            "start command p99, sequential",
            "-",
            spread([percentile(s.latencies, 99) for s in start]),
            spread([percentile(s.latencies, 99) for s in bare]),
            fmt(REFERENCE["seq_p99"], 1),
            "",
        ],
        [
            f"commands/s, {IN_FLIGHT} in flight",
            "-",
            spread([s.rate for s in flight_start], 0),
            spread([s.rate for s in flight_bare], 0),
            fmt(REFERENCE["flight_rps"], 0),
            "",
        ],
        [
            f"p50 ms, {IN_FLIGHT} in flight",
            "-",
            spread([percentile(s.latencies, 50) for s in flight_start]),
            spread([percentile(s.latencies, 50) for s in flight_bare]),
            fmt(REFERENCE["flight_p50"], 1),
            "",
        ],
    ]
    for conns, admin_runs in sorted(res.admin.items()):
        loads = [x for x, _ in admin_runs]
        rows.append(
            [
                f"admin POST .../start p50, wrk -c{conns}",
                "-",
                spread([x.p50_ms for x in loads]),
                "-",
                "-",
                f"{fmt(median(x.rps for x in loads), 0)} req/s",
            ]
        )
    print(
        table(
            ["measure", "goal", "nocosup", "bare pattern (same run)", "perf-baseline §4", "note"],
            rows,
        )
    )
    print(
        "\nperf-baseline §4: redis_bench.py request/reply over a reply stream on this machine,"
        " unpinned, another day (reference, not measured here). Bare pattern: the same"
        " pattern measured in this run, its worker placed like nocosup's."
    )


def main() -> int:
    args = parse_args()
    if args.floor_worker:
        uvloop.run(floor_worker(*args.floor_worker))
        return 0
    require_wrk()
    require_fast_uvicorn()
    require_redis(args.redis_url)
    pin_self(None if args.no_pin else 0)
    prefix = redis_prefix("commands")
    print(f"# commands: rounds={args.rounds} samples={args.samples} ({machine_line()})")
    print(
        "# "
        + (
            "unpinned"
            if args.no_pin
            else "this process and wrk on CPU 0; supervisor, worker, bare worker on CPU 1"
        )
        + f"; Redis {args.redis_url} prefix {prefix}"
    )
    try:
        with Workspace("commands", keep=args.keep) as ws:
            results = uvloop.run(run(args, ws, prefix))
    finally:
        removed = purge_redis(args.redis_url, prefix)
        print(f"# removed {removed} Redis keys under {prefix}:", file=sys.stderr)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
