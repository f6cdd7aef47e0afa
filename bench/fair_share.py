"""Fair share in one process: the latency of a quiet app while a neighbour is flooded,
with and without ``options.maxConcurrency`` on the flooded one.

One ``nocosup serve`` (pinned to CPU 1) hosts ``noisy`` and ``quiet``. For each round,
wrk floods ``/apps/noisy/api/blob?size=65536`` (64 KiB answers: real work per request)
with ``--connections`` connections while this script times sequential requests to
``/apps/quiet/api/info``. Rounds alternate: ``uncapped`` (noisy has no cap) and
``capped`` (noisy has ``maxConcurrency`` 4 and ``maxQueue`` 4, so its excess is refused
at once with 503 APP_OVERLOADED). Reported per mode: quiet's p50/p99 and noisy's answered
and refused requests per second; and quiet alone, unloaded, as the floor.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import httpx
from common import (
    Admin,
    Workspace,
    fmt,
    nocosup_server,
    percentile,
    require_wrk,
    run_wrk,
    start_run,
    table,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per mode (3)")
    p.add_argument("--duration", type=float, default=5, help="seconds per round (5)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--no-pin", action="store_true", help="do not pin clients and servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


def time_quiet(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        while not stop.is_set():
            began = time.perf_counter()
            r = http.get("/apps/quiet/api/info")
            if r.status_code == 200:
                out.append(time.perf_counter() - began)


def main() -> int:
    args = parse_args()
    require_wrk()
    cpus = start_run(
        "fair share: a quiet app beside a flooded one",
        args.no_pin,
        "wrk and the timing client on CPU 0, the server on CPU 1",
        f"wrk -c{args.connections} -d{args.duration:g}s on noisy, {args.rounds} rounds per mode",
    )
    with Workspace("fair-share", keep=args.keep) as ws:
        server = ws.start(nocosup_server(ws.dir, label="host", cpus=cpus))
        admin = Admin(server)
        for name in ("noisy", "quiet"):
            admin.create_app(name)
            admin.start_app(name)
        floor: list[float] = []
        idle = threading.Event()
        timer = threading.Thread(target=time_quiet, args=(server.url, idle, floor))
        timer.start()
        time.sleep(args.duration)
        idle.set()
        timer.join()
        results: dict[str, list[tuple[list[float], float, float]]] = {"uncapped": [], "capped": []}
        caps = {
            "uncapped": {"maxConcurrency": None, "maxQueue": None},
            "capped": {"maxConcurrency": 4, "maxQueue": 4},
        }
        for k in range(args.rounds * 2):
            mode = "uncapped" if k % 2 == 0 else "capped"
            admin.call("PATCH", "/api/apps/noisy", {"options": caps[mode]})
            admin.call("POST", "/api/apps/noisy/stop")  # options apply at the next start
            admin.call("POST", "/api/apps/noisy/start")
            quiet: list[float] = []
            stop = threading.Event()
            timer = threading.Thread(target=time_quiet, args=(server.url, stop, quiet))
            timer.start()
            load = run_wrk(
                f"{server.url}/apps/noisy/api/blob?size=65536",
                connections=args.connections,
                duration=args.duration,
                server=server,
            )
            stop.set()
            timer.join()
            refused = load.errors.get("status", 0) / load.seconds
            results[mode].append((quiet, load.rps - refused, refused))
        admin.close()
    rows = [
        [
            "quiet alone",
            len(floor),
            fmt(percentile(floor, 50) * 1000, 2),
            fmt(percentile(floor, 99) * 1000, 2),
            "-",
            "-",
        ]
    ]
    for mode, runs in results.items():
        samples = [s for quiet, _, _ in runs for s in quiet]
        answered = sum(r[1] for r in runs) / len(runs)
        refused = sum(r[2] for r in runs) / len(runs)
        rows.append(
            [
                f"quiet, noisy {mode}",
                len(samples),
                fmt(percentile(samples, 50) * 1000, 2),
                fmt(percentile(samples, 99) * 1000, 2),
                fmt(answered),
                fmt(refused),
            ]
        )
    print()
    print(
        table(
            ["quiet app", "samples", "p50 ms", "p99 ms", "noisy answered/s", "noisy refused/s"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
