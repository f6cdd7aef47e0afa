"""Scale: many apps, few running. 10,000 apps registered in one ``nocosup serve`` with
``NOCOSUP_MAX_RUNNING_APPS=100``, requests spread over them, then start/stop cycles.

The registry is filled directly (the rows ``POST /api/apps`` would write; each app's
SQLite file is made by its first boot). Then, client-side over HTTP with keep-alive:

* **spread:** ``--requests`` GETs of ``/apps/{name}/api/info``, 80% to a hot set of 80
  apps and 20% to any app, from ``--clients`` concurrent clients. Reported: latency
  p50/p99, cold starts (boots counted by ``GET /metrics``) and evictions per request, and
  the server's RSS and peak RSS (VmHWM) before and after;
* **cycles:** ``--cycles`` admin start + stop of one app; the RSS growth over them (the
  goal is under 1 MB for 1000 cycles).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx
from common import Admin, Workspace, fmt, nocosup_server, percentile, start_run, table
from listing import app_name, seed
from prometheus_client.parser import text_string_to_metric_families


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", "--apps", type=int, default=10_000, help="apps registered (10000)")
    p.add_argument("--cap", type=int, default=100, help="NOCOSUP_MAX_RUNNING_APPS (100)")
    p.add_argument("--requests", type=int, default=5000, help="requests spread (5000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    p.add_argument("--cycles", type=int, default=1000, help="start/stop cycles (1000)")
    p.add_argument("--seed", type=int, default=20261129, help="random seed")
    p.add_argument("--no-pin", action="store_true", help="do not pin clients and servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


def counters(text: str) -> dict[str, float]:
    """Sums of the lifecycle counters in a /metrics answer."""
    out = {"boots": 0.0, "evictions": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nocosup_boots_total":
                out["boots"] += sample.value
            elif sample.name == "nocosup_evictions_total":
                out["evictions"] += sample.value
    return out


async def spread(url: str, token: str, args: argparse.Namespace) -> tuple[list[float], int]:
    rng = random.Random(args.seed)
    hot = [app_name(i) for i in rng.sample(range(args.apps), 80)]
    names = [
        rng.choice(hot) if rng.random() < 0.8 else app_name(rng.randrange(args.apps))
        for _ in range(args.requests)
    ]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)

    async def client() -> None:
        nonlocal failures
        async with httpx.AsyncClient(base_url=url, timeout=60, trust_env=False) as http:
            while not queue.empty():
                name = queue.get_nowait()
                began = time.perf_counter()
                r = await http.get(f"/apps/{name}/api/info")
                latencies.append(time.perf_counter() - began)
                failures += r.status_code != 200

    await asyncio.gather(*(client() for _ in range(args.clients)))
    return latencies, failures


def main() -> int:
    args = parse_args()
    if args.apps < 200 or args.cap < 1:
        print("bench: --apps must be at least 200 and --cap at least 1", file=sys.stderr)
        return 2
    cpus = start_run(
        f"scale: N={args.apps}, NOCOSUP_MAX_RUNNING_APPS={args.cap}",
        args.no_pin,
        "clients on CPU 0, server on CPU 1",
    )
    with Workspace("scale", keep=args.keep) as ws:
        server = nocosup_server(
            ws.dir, label="scale", cpus=cpus, env={"NOCOSUP_MAX_RUNNING_APPS": str(args.cap)}
        )
        storage = Path(server.env["NOCOSUP_STORAGE_DIR"])
        storage.mkdir(mode=0o700, parents=True)
        asyncio.run(seed(storage, args.apps))
        ws.start(server)
        token = server.env["NOCOSUP_ADMIN_TOKEN"]
        admin = Admin(server)
        try:
            rss0, hwm0 = server.rss_kib(), server._status("VmHWM")
            before = counters(admin.call("GET", "/metrics")[1].text)
            began = time.perf_counter()
            latencies, failures = asyncio.run(spread(server.url, token, args))
            took = time.perf_counter() - began
            after = counters(admin.call("GET", "/metrics")[1].text)
            rss1, hwm1 = server.rss_kib(), server._status("VmHWM")
            running = admin.call("GET", "/api/apps?limit=1&status=running")[1].json()["total"]

            name = app_name(0)
            admin.call("POST", f"/api/apps/{name}/start")
            admin.call("POST", f"/api/apps/{name}/stop")
            cycle_rss0 = server.rss_kib()
            for _ in range(args.cycles):
                admin.call("POST", f"/api/apps/{name}/start")
                admin.call("POST", f"/api/apps/{name}/stop")
            time.sleep(1)
            cycle_rss1 = server.rss_kib()
        finally:
            admin.close()
    boots = after["boots"] - before["boots"]
    evictions = after["evictions"] - before["evictions"]
    print()
    print(
        table(
            ["measure", "value"],
            [
                ["requests (failed)", f"{len(latencies)} ({failures})"],
                ["requests per second", fmt(len(latencies) / took)],
                [
                    "latency p50 / p99 ms",
                    f"{fmt(percentile(latencies, 50) * 1000, 2)} / "
                    f"{fmt(percentile(latencies, 99) * 1000, 2)}",
                ],
                ["cold starts (per request)", f"{int(boots)} ({boots / len(latencies):.3f})"],
                ["evictions", str(int(evictions))],
                ["apps running at the end (cap)", f"{running} ({args.cap})"],
                ["RSS before / after, MiB", f"{rss0 / 1024:.1f} / {rss1 / 1024:.1f}"],
                ["peak RSS (VmHWM) before / after, MiB", f"{hwm0 / 1024:.1f} / {hwm1 / 1024:.1f}"],
                [
                    f"RSS growth over {args.cycles} start/stop cycles, KiB",
                    str(cycle_rss1 - cycle_rss0),
                ],
            ],
        )
    )
    return 0 if failures == 0 and running <= args.cap else 1


if __name__ == "__main__":
    sys.exit(main())
