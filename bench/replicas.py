"""Supervisor replicas: what a second supervisor buys, and what losing one costs.

One run starts a worker (env_a) and supervisors on one PostgreSQL registry (a database of
its own, dropped at the end) and one Redis prefix (removed at the end), then measures:

1. **Admin operations per second** with 1 and 2 replicas: ``--concurrency`` loops, each on
   an app of its own, alternate ``PATCH /api/apps/{name}`` (a registry write, announced to
   the other replica) and ``GET /api/apps/{name}``; with 2 replicas the loops spread their
   calls over both. Rounds alternate the two set-ups.
2. **Proxy requests per second** through a supervisor served with ``--workers 1`` and one
   with ``--workers 2`` (wrk, ``GET /apps/bench/api/info``), side by side in each round.
3. **Killing a supervisor**: HAProxy (Debian's, with compose/haproxy.cfg's checks, retries
   and redispatch) in front of the two replicas, request loops through it (tenant GETs and
   admin GETs), then ``kill -9`` of the replica holding the upkeep lease. Printed: requests
   failed, the longest wait for an answer around the kill, and how long until the other
   replica held the lease (its background duties).

    python bench/replicas.py [--rounds 2] [--duration 4] [--concurrency 8] [--no-pin] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import time
from typing import Any

import httpx
import redis
from common import (
    DEFAULT_REDIS_URL,
    ROOT,
    Admin,
    LoadResult,
    ServerProcess,
    Workspace,
    fmt,
    free_port,
    median,
    pg_registry,
    purge_redis,
    redis_prefix,
    require_redis,
    require_tool,
    require_wrk,
    rotations,
    run_wrk,
    start_run,
    supervisor_server,
    table,
    worker_server,
)

HAPROXY_CFG = ROOT / "compose" / "haproxy.cfg"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="rounds of parts 1 and 2 (2)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (4)")
    p.add_argument("--concurrency", type=int, default=8, help="admin loops / wrk conns x4 (8)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"({DEFAULT_REDIS_URL})")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


# --- 1. admin operations ----------------------------------------------------------------


async def admin_rate(
    supervisors: list[ServerProcess], apps: list[str], seconds: float
) -> tuple[float, int]:
    """(operations per second, failed) for loops spreading their calls over ``supervisors``."""
    token = supervisors[0].env["NOCOSUP_ADMIN_TOKEN"]
    headers = {"Authorization": f"Bearer {token}"}
    clients = [
        httpx.AsyncClient(base_url=s.url, headers=headers, timeout=30, trust_env=False)
        for s in supervisors
    ]
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def loop(i: int, app: str) -> None:
        nonlocal done, failed
        n = i
        while time.monotonic() < deadline:
            client = clients[n % len(clients)]
            n += 1
            if n % 2:
                resp = await client.patch(f"/api/apps/{app}", json={"title": f"t{n}"})
            else:
                resp = await client.get(f"/api/apps/{app}")
            if resp.status_code == 200:
                done += 1
            else:
                failed += 1

    began = time.monotonic()
    try:
        await asyncio.gather(*(loop(i, app) for i, app in enumerate(apps)))
    finally:
        for client in clients:
            await client.aclose()
    return done / (time.monotonic() - began), failed


# --- 3. killing a supervisor --------------------------------------------------------------


def local_haproxy_cfg(port: int, servers: dict[str, int]) -> str:
    """compose/haproxy.cfg listening on 127.0.0.1:``port`` with its servers on local ports;
    checks, retries, redispatch and header rules as deployed."""
    text, bound = re.subn(r"(?m)^(\s+bind) :80$", rf"\1 127.0.0.1:{port}", HAPROXY_CFG.read_text())
    assert bound == 1, "compose/haproxy.cfg changed: no 'bind :80'"
    for name, server_port in servers.items():
        text, moved = re.subn(
            rf"(?m)^(\s+server {name}) {name}:80$", rf"\1 127.0.0.1:{server_port}", text
        )
        assert moved == 1, f"compose/haproxy.cfg changed: no server {name}"
    # the bench prints its own lines: HAProxy's per-request log would only fill the pipe
    return text.replace("    option httplog\n", "").replace("    log global\n", "")


class Probe:
    """Request loops through HAProxy, recording every answer's time and outcome."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        #: (monotonic time sent, seconds to answer, outcome) for every request.
        self.samples: list[tuple[float, float, str]] = []
        self.stop = asyncio.Event()

    async def loop(self, i: int) -> None:
        path = "/apps/bench/api/info" if i % 2 else "/api/apps/bench"
        async with httpx.AsyncClient(
            base_url=self.base, headers=self.headers, timeout=30, trust_env=False
        ) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    resp = await client.get(path)
                    outcome = str(resp.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.samples.append((sent, time.monotonic() - sent, outcome))


def lease_holder(r: redis.Redis, prefix: str) -> str | None:
    value = r.get(f"{prefix}:lease:upkeep")
    return value.decode() if isinstance(value, bytes) else None


async def kill_one(
    replicas: dict[str, ServerProcess], base: str, token: str, rkey: tuple[str, str]
) -> dict[str, Any]:
    """Load through HAProxy, SIGKILL the lease holder, keep loading; what the load saw."""
    url, prefix = rkey
    r = redis.Redis.from_url(url)
    try:
        holder = await asyncio.to_thread(lease_holder, r, prefix)
        victim = holder if holder in replicas else next(iter(replicas))
        probe = Probe(base, token)
        loops = [asyncio.create_task(probe.loop(i)) for i in range(8)]
        await asyncio.sleep(2)
        killed_at = time.monotonic()
        os.kill(replicas[victim].pid, signal.SIGKILL)
        lease_moved: float | None = None
        while time.monotonic() - killed_at < 15:
            now_holder = await asyncio.to_thread(lease_holder, r, prefix)
            if now_holder is not None and now_holder != victim:
                lease_moved = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, 3 - (time.monotonic() - killed_at)))
        probe.stop.set()
        await asyncio.gather(*loops)
    finally:
        r.close()
    before = [s for s in probe.samples if s[0] < killed_at - 1]
    around = [s for s in probe.samples if s[0] >= killed_at - 1]
    failed = [s for s in around if s[2] != "200"]
    return {
        "victim": victim,
        "before": len(before),
        "after": len(around),
        "failed": len(failed),
        "failures": sorted({s[2] for s in failed}),
        "longest": max((s[1] for s in around), default=0.0),
        "typical": median([s[1] for s in before]) if before else 0.0,
        "lease": lease_moved,
    }


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    require_redis(args.redis_url)
    require_wrk()
    haproxy = require_tool("haproxy", "apt-get install haproxy")
    cpus = start_run(
        "supervisor replicas",
        args.no_pin,
        "supervisors, worker and HAProxy on CPU 1",
        load=f"{args.concurrency} admin loops",
    )
    prefix = redis_prefix("replicas")
    admin_rows: list[list[Any]] = []
    proxy_rows: list[list[Any]] = []
    kill: dict[str, Any] = {}
    try:
        with pg_registry("replicas") as db_env, Workspace("replicas", keep=args.keep) as ws:
            token = "bench-" + os.urandom(16).hex()
            names = ("supervisor_1", "supervisor_2")

            def supervisor(label: str, workers: int = 1) -> ServerProcess:
                server = supervisor_server(
                    ws.dir,
                    args.redis_url,
                    prefix,
                    label=label,
                    cpus=cpus,
                    env={**db_env, "NOCOSUP_ADMIN_TOKEN": token, "NOCOSUP_INSTANCE_ID": label},
                )
                if workers > 1:
                    server.argv += ["--workers", str(workers)]
                return server

            sups = {name: ws.start(supervisor(name)) for name in names}
            ws.start(
                worker_server(
                    ws.dir, args.redis_url, prefix, "env_a", cpus=cpus, env={**db_env}
                )
            )
            admin = Admin(sups[names[0]])
            apps = [f"adm{i}" for i in range(args.concurrency)]
            try:
                admin.wait_environments({"env_a": 1})
                admin.create_app("bench", environments=["env_a"])
                admin.start_app("bench")
                for app in apps:
                    admin.create_app(app, environments=["env_a"])
            finally:
                admin.close()
            wide = ws.start(supervisor("supervisor_w2", workers=2))

            setups = {"1 replica": [sups[names[0]]], "2 replicas": list(sups.values())}
            rates: dict[str, list[float]] = {k: [] for k in setups}
            fails: dict[str, int] = dict.fromkeys(setups, 0)
            for _, order in rotations(list(setups), args.rounds):
                for key in order:
                    rate, failed = asyncio.run(admin_rate(setups[key], apps, args.duration))
                    rates[key].append(rate)
                    fails[key] += failed
            for key in setups:
                admin_rows.append([key, fmt(median(rates[key])), fails[key]])

            targets = {"--workers 1": sups[names[0]], "--workers 2": wide}
            runs: dict[str, list[LoadResult]] = {k: [] for k in targets}
            for _, order in rotations(list(targets), args.rounds):
                for key in order:
                    runs[key].append(
                        run_wrk(
                            targets[key].url + "/apps/bench/api/info",
                            connections=args.concurrency * 4,
                            duration=args.duration,
                        )
                    )
            for key, results in runs.items():
                proxy_rows.append(
                    [
                        key,
                        fmt(median([x.rps for x in results]), 0),
                        fmt(median([x.p50_ms for x in results]), 2),
                        fmt(median([x.p99_ms for x in results]), 2),
                        sum(x.failed for x in results),
                    ]
                )
            wide.stop()

            port = free_port()
            cfg = ws.dir / "haproxy.cfg"
            cfg.write_text(local_haproxy_cfg(port, {n: sups[n].port for n in names}))
            front = subprocess.Popen(
                [haproxy, "-db", "-f", str(cfg)],
                stdout=(ws.dir / "haproxy.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                wait_ready(base)
                kill = asyncio.run(kill_one(sups, base, token, (args.redis_url, prefix)))
            finally:
                front.terminate()
                front.wait(10)
    finally:
        purge_redis(args.redis_url, prefix)

    print("\n## admin operations per second (PATCH + GET of one app per loop)")
    print(table(["set-up", "ops/s (median)", "failed"], admin_rows))
    print("\n## proxied requests per second (GET /apps/bench/api/info through the supervisor)")
    print(table(["supervisor", "req/s", "p50 ms", "p99 ms", "failed"], proxy_rows))
    print("\n## kill -9 of one replica behind HAProxy (8 loops: tenant GET and admin GET)")
    print(
        table(
            [
                "killed",
                "requests before",
                "requests after",
                "failed",
                "longest wait s",
                "typical wait ms",
                "lease moved after s",
            ],
            [
                [
                    kill["victim"],
                    kill["before"],
                    kill["after"],
                    f"{kill['failed']} {','.join(kill['failures'])}".strip(),
                    fmt(kill["longest"], 2),
                    fmt(kill["typical"] * 1000, 1),
                    fmt(kill["lease"], 2) if kill["lease"] is not None else "never",
                ]
            ],
        )
    )


def wait_ready(base: str, timeout: float = 15) -> None:
    """Until HAProxy answers through a supervisor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"HAProxy at {base} never answered")


if __name__ == "__main__":
    main()
