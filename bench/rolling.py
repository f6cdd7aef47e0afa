"""The 503 window of a rolling worker restart: a supervisor, env_a and env_b (real
``nocosup serve`` processes, SQLite storage, a Redis prefix of its own removed at the end),
an app on both environments and an app on env_a only, under a load of concurrent
``GET /apps/{name}/api/info`` through the supervisor while each worker in turn gets
SIGTERM, exits, starts again and registers.

For each restart it prints, per app, the requests served and failed and, for the
single-environment app, the 503 window: from its first 503 to its last one, and how long
the worker took from SIGTERM to exit and from its start to registered. The two-environment
app should fail no request; the single-environment one only with 503 and Retry-After.

    python bench/rolling.py [--rounds 3] [--concurrency 8] [--no-pin] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import httpx
from common import (
    DEFAULT_REDIS_URL,
    Admin,
    ServerProcess,
    Workspace,
    fmt,
    median,
    purge_redis,
    redis_prefix,
    require_redis,
    start_run,
    supervisor_server,
    table,
    worker_server,
)

APPS = ("rollboth", "rollone")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="restarts of each worker (3)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent request loops (8)")
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s (1)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"({DEFAULT_REDIS_URL})")
    p.add_argument("--no-pin", action="store_true", help="do not pin the servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


@dataclass
class Tally:
    """What the load saw during one restart."""

    served: dict[str, int] = field(default_factory=lambda: dict.fromkeys(APPS, 0))
    failed: dict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: {a: [] for a in APPS}
    )
    #: Set once every app served a request after :meth:`restarted` (it serves again).
    all_served: asyncio.Event = field(default_factory=asyncio.Event)
    baseline: dict[str, int] | None = None

    def restarted(self) -> None:
        self.baseline = dict(self.served)

    def check_served(self) -> None:
        base = self.baseline
        if base is not None and all(self.served[a] > base[a] for a in APPS):
            self.all_served.set()

    def window(self, app: str) -> float:
        times = [t for t, what in self.failed[app] if what.startswith("503+retry")]
        return times[-1] - times[0] if times else 0.0

    def other_failures(self, app: str) -> int:
        return sum(1 for _t, what in self.failed[app] if not what.startswith("503+retry"))


async def load_loop(client: httpx.AsyncClient, box: list[Tally], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for app in APPS:
            tally = box[0]
            try:
                resp = await client.get(f"/apps/{app}/api/info")
            except httpx.HTTPError as exc:
                tally.failed[app].append((time.monotonic(), repr(exc)))
                continue
            if resp.status_code == 200:
                tally.served[app] += 1
                if not tally.all_served.is_set():
                    tally.check_served()
            elif resp.status_code == 503 and resp.headers.get("retry-after"):
                tally.failed[app].append((time.monotonic(), "503+retry"))
            else:
                tally.failed[app].append((time.monotonic(), f"{resp.status_code}"))


async def restart(worker: ServerProcess, admin: Admin, name: str) -> tuple[float, float]:
    """SIGTERM, wait for exit, start again, wait until registered: (exit s, start s)."""
    began = time.monotonic()
    await asyncio.to_thread(worker.stop)
    exited = time.monotonic() - began
    began = time.monotonic()
    await asyncio.to_thread(worker.start)
    await asyncio.to_thread(admin.wait_environments, {name: 1})
    return exited, time.monotonic() - began


async def measure(
    sup: ServerProcess, workers: dict[str, ServerProcess], admin: Admin, args: argparse.Namespace
) -> list[tuple[str, Tally, float, float]]:
    out: list[tuple[str, Tally, float, float]] = []
    box = [Tally()]
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=sup.url, timeout=60, trust_env=False) as client:
        loops = [asyncio.create_task(load_loop(client, box, stop)) for _ in range(args.concurrency)]
        try:
            for _ in range(args.rounds):
                for name, worker in workers.items():
                    box[0] = tally = Tally()
                    exited, registered = await restart(worker, admin, name)
                    tally.restarted()  # until both apps served again after it
                    await tally.all_served.wait()
                    await asyncio.sleep(0.5)
                    out.append((name, tally, exited, registered))
        finally:
            stop.set()
            await asyncio.gather(*loops)
    return out


def main() -> None:
    args = parse_args()
    require_redis(args.redis_url)
    cpus = start_run(
        "rolling restart",
        args.no_pin,
        "supervisor and workers on CPU 1",
        load=f"{args.concurrency} request loops",
    )
    prefix = redis_prefix("rolling")
    try:
        with Workspace("rolling", keep=args.keep) as ws:
            sup = ws.start(
                supervisor_server(ws.dir, args.redis_url, prefix, interval=args.interval, cpus=cpus)
            )
            workers = {
                name: ws.start(
                    worker_server(
                        ws.dir, args.redis_url, prefix, name, interval=args.interval, cpus=cpus
                    )
                )
                for name in ("env_a", "env_b")
            }
            admin = Admin(sup)
            try:
                admin.wait_environments({"env_a": 1, "env_b": 1})
                admin.create_app("rollboth", environments=["env_a", "env_b"])
                admin.create_app("rollone", environments=["env_a"])
                for app in APPS:
                    admin.start_app(app)
                samples = asyncio.run(measure(sup, workers, admin, args))
            finally:
                admin.close()
    finally:
        purge_redis(args.redis_url, prefix)
    rows = []
    for name, tally, exited, registered in samples:
        rows.append(
            [
                name,
                tally.served["rollboth"],
                len(tally.failed["rollboth"]),
                tally.served["rollone"],
                len(tally.failed["rollone"]) - tally.other_failures("rollone"),
                tally.other_failures("rollone"),
                fmt(tally.window("rollone"), 2) if name == "env_a" else "-",
                fmt(exited, 2),
                fmt(registered, 2),
            ]
        )
    print(
        table(
            [
                "restarted",
                "2-env served",
                "2-env failed",
                "1-env served",
                "1-env 503",
                "1-env other failures",
                "503 window s",
                "SIGTERM to exit s",
                "start to registered s",
            ],
            rows,
        )
    )
    windows = [tally.window("rollone") for name, tally, _e, _r in samples if name == "env_a"]
    print(f"\n503 window of the single-environment app, median: {fmt(median(windows), 2)} s")


if __name__ == "__main__":
    main()
