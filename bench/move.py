"""Move and failover times: a supervisor and env_a, env_b, env_c (real ``nocosup serve``
processes on one PostgreSQL server, a database of the run's own dropped at the end, a
Redis prefix of its own removed at the end).

Moves: the app ``mover`` (running, PostgreSQL-backed) goes back and forth between env_a
and env_b under concurrent ``GET /apps/mover/api/info`` loops through the supervisor. Per
move it prints the time of the move call, the time from the call to the first answer from
the target environment, and what the loops saw: requests served, 503s with Retry-After and
their window (first to last), and any other failure (there should be none).

Failover: the app ``phoenix`` (``options.failover: true``) runs on env_c alone; env_c's
worker gets SIGKILL. It prints the time from the kill to the supervisor showing env_c
offline, and to ``phoenix`` answering from another environment; then env_c starts again,
``phoenix`` moves back, and the next round kills it again.

    python bench/move.py [--moves 6] [--failovers 3] [--failover-after 1] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from dataclasses import dataclass, field

import httpx
from common import (
    DEFAULT_PG_DSN,
    DEFAULT_REDIS_URL,
    Admin,
    ServerProcess,
    Workspace,
    fmt,
    median,
    pg_registry,
    purge_redis,
    redis_prefix,
    require_redis,
    start_run,
    supervisor_server,
    table,
    worker_server,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--moves", type=int, default=6, help="moves of the app under load (6)")
    p.add_argument("--failovers", type=int, default=3, help="killed workers (3)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent request loops (8)")
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s (1)")
    p.add_argument(
        "--failover-after", type=float, default=1.0, help="NOCOSUP_FAILOVER_AFTER, s (1)"
    )
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"({DEFAULT_REDIS_URL})")
    p.add_argument("--pg", default=DEFAULT_PG_DSN, help=f"a PostgreSQL server ({DEFAULT_PG_DSN})")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


@dataclass
class Seen:
    """What the request loops saw during one move."""

    target: str
    began: float = field(default_factory=time.monotonic)
    served: int = 0
    first_on_target: float | None = None
    on_target: asyncio.Event = field(default_factory=asyncio.Event)
    retry_503: list[float] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def window(self) -> float:
        return self.retry_503[-1] - self.retry_503[0] if self.retry_503 else 0.0


async def load_loop(client: httpx.AsyncClient, box: list[Seen], stop: asyncio.Event) -> None:
    while not stop.is_set():
        seen = box[0]
        try:
            resp = await client.get("/apps/mover/api/info")
        except httpx.HTTPError as exc:
            seen.other.append(repr(exc))
            continue
        if resp.status_code == 200:
            seen.served += 1
            if seen.first_on_target is None and resp.json().get("environment") == seen.target:
                seen.first_on_target = time.monotonic()
                seen.on_target.set()
        elif resp.status_code == 503 and resp.headers.get("retry-after"):
            seen.retry_503.append(time.monotonic())
        else:
            seen.other.append(f"{resp.status_code} {resp.text[:120]}")


async def measure_moves(
    sup: ServerProcess, admin: Admin, args: argparse.Namespace
) -> list[tuple[str, Seen, float, float]]:
    out: list[tuple[str, Seen, float, float]] = []
    box = [Seen("env_a")]
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=sup.url, timeout=60, trust_env=False) as client:
        loops = [asyncio.create_task(load_loop(client, box, stop)) for _ in range(args.concurrency)]
        try:
            await asyncio.sleep(1)  # the loops warm up on env_a
            for i in range(args.moves):
                target = "env_b" if i % 2 == 0 else "env_a"
                box[0] = seen = Seen(target)
                call, _ = await asyncio.to_thread(
                    admin.call, "POST", "/api/apps/mover/move", {"to": target}
                )
                await seen.on_target.wait()
                assert seen.first_on_target is not None
                to_target = seen.first_on_target - seen.began
                await asyncio.sleep(1)  # the loops keep going on the target
                out.append((target, seen, call, to_target))
        finally:
            stop.set()
            await asyncio.gather(*loops)
    return out


def wait_until(check: object, timeout: float = 60, step: float = 0.01) -> float:
    """Poll ``check()`` until truthy; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(step)
    raise RuntimeError(f"condition not met in {timeout}s")


def measure_failover(
    sup: ServerProcess, env_c: ServerProcess, admin: Admin
) -> tuple[float, float, str]:
    """Kill env_c: (kill to offline s, kill to answering elsewhere s, where)."""
    client = httpx.Client(base_url=sup.url, timeout=10, trust_env=False)
    where: list[str] = []

    def answering_elsewhere() -> bool:
        try:
            resp = client.get("/apps/phoenix/api/info")
        except httpx.HTTPError:
            return False
        if resp.status_code == 200 and resp.json().get("environment") != "env_c":
            where.append(resp.json()["environment"])
            return True
        return False

    try:
        assert env_c.proc is not None
        killed = time.monotonic()
        env_c.proc.send_signal(signal.SIGKILL)
        env_c.proc.wait(10)
        offline = wait_until(
            lambda: admin.environments()["env_c"]["status"] == "offline", step=0.02
        )
        answered = wait_until(answering_elsewhere)
    finally:
        client.close()
    return offline - killed, answered - killed, where[0]


def main() -> None:
    args = parse_args()
    require_redis(args.redis_url)
    cpus = start_run(
        "move and failover",
        args.no_pin,
        "supervisor and workers on CPU 1",
        load=f"{args.concurrency} request loops",
    )
    prefix = redis_prefix("move")
    try:
        with pg_registry("move", args.pg) as db, Workspace("move", keep=args.keep) as ws:
            sup = ws.start(
                supervisor_server(
                    ws.dir,
                    args.redis_url,
                    prefix,
                    interval=args.interval,
                    cpus=cpus,
                    env={**db, "NOCOSUP_FAILOVER_AFTER": f"{args.failover_after:g}"},
                )
            )
            workers = {
                name: ws.start(
                    worker_server(
                        ws.dir,
                        args.redis_url,
                        prefix,
                        name,
                        interval=args.interval,
                        cpus=cpus,
                        env=db,
                    )
                )
                for name in ("env_a", "env_b", "env_c")
            }
            admin = Admin(sup)
            try:
                admin.wait_environments({"env_a": 1, "env_b": 1, "env_c": 1})
                admin.create_app("mover", environments=["env_a"])
                admin.start_app("mover")
                moves = asyncio.run(measure_moves(sup, admin, args))
                admin.create_app("phoenix", environments=["env_c"], options={"failover": True})
                admin.start_app("phoenix")
                failovers = []
                for i in range(args.failovers):
                    if i:
                        workers["env_c"].start()
                        admin.wait_environments({"env_c": 1})
                        admin.call("POST", "/api/apps/phoenix/move", {"to": "env_c"})
                    failovers.append(measure_failover(sup, workers["env_c"], admin))
            finally:
                admin.close()
    finally:
        purge_redis(args.redis_url, prefix)

    print(
        table(
            [
                "to",
                "move call s",
                "call to target answering s",
                "served",
                "503 + Retry-After",
                "503 window s",
                "other failures",
            ],
            [
                [
                    target,
                    fmt(call, 3),
                    fmt(to_target, 3),
                    seen.served,
                    len(seen.retry_503),
                    fmt(seen.window(), 3),
                    len(seen.other),
                ]
                for target, seen, call, to_target in moves
            ],
        )
    )
    print(
        f"\nmove, median: call {fmt(median(m[2] for m in moves), 3)} s, call to the target "
        f"answering {fmt(median(m[3] for m in moves), 3)} s, 503 window "
        f"{fmt(median(m[1].window() for m in moves), 3)} s"
    )
    print(
        "\n"
        + table(
            ["round", "kill to offline s", "kill to answering elsewhere s", "on"],
            [[i + 1, fmt(off, 2), fmt(ans, 2), on] for i, (off, ans, on) in enumerate(failovers)],
        )
    )
    print(
        f"\nfailover (heartbeat interval {args.interval:g} s, NOCOSUP_FAILOVER_AFTER "
        f"{args.failover_after:g} s), median: offline {fmt(median(f[0] for f in failovers), 2)} "
        f"s, answering elsewhere {fmt(median(f[1] for f in failovers), 2)} s after the kill"
    )


if __name__ == "__main__":
    main()
