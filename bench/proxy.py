"""Proxy throughput: requests through nocosup's proxy vs straight to the upstream worker.

Three servers run side by side for the whole run:

* direct: the upstream, ``uvicorn proxy_clients:upstream_app`` (a tiny Starlette app,
          ``/apps/demo/ping`` = 1018 bytes of JSON, ``/apps/demo/big`` = 1 MiB);
* floor:  a bare raw-ASGI app on the same uvicorn flags answering the 1 KB body itself:
          what any proxy built on uvicorn pays before forwarding anything (1 KB only);
* proxy:  ``nocosup.proxy.Proxy`` with its default client, in its own uvicorn process,
          forwarding to direct the way the supervisor's gateway does.

wrk runs against each in an order that rotates per round. Printed: req/s and latency
medians, CPU µs/request of the measured process and of the upstream, and proxy/direct
ratios (of the medians and per round). Goal: proxy/direct >= 0.5x (nginx: 0.78x for 1 KB,
0.37x for 1 MB on this machine, see /work/shared/reference/perf-baseline.md).
Pinned by default (wrk on CPU 0, all servers on CPU 1): the proxy and the upstream then
share one core, as a supervisor and a worker on a one-core box would.

    python bench/proxy.py [--rounds 5] [--duration 5] [--connections 32] [--no-pin]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import (
    LoadResult,
    ServerProcess,
    Workspace,
    check_fast_loop,
    fmt,
    median,
    ratio,
    require_fast_uvicorn,
    require_wrk,
    rotations,
    run_wrk,
    start_run,
    table,
    uvicorn_server,
)
from proxy_clients import SIZES

BENCH_DIR = Path(__file__).resolve().parent
GOAL = 0.5
_FLOOR_BODY = b'{"status":"ok","data":"' + b"x" * 993 + b'"}'


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``uvicorn proxy:floor_app --app-dir bench``: answers 1 KB with no routing at all."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_FLOOR_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _FLOOR_BODY})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds per size (default 5)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--warmup", type=float, default=2, help="warm-up seconds per target")
    p.add_argument("--sizes", default="1KB,1MB", help="comma-separated: 1KB,1MB")
    p.add_argument("--no-pin", action="store_true", help="do not pin wrk and servers to CPUs")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    require_wrk()
    require_fast_uvicorn()
    cpus = start_run(
        "proxy vs direct",
        args.no_pin,
        "wrk on CPU 0, all servers on CPU 1",
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds",
    )
    sizes = [s for s in args.sizes.split(",") if s]
    app_dir = ["--app-dir", str(BENCH_DIR)]
    with Workspace("proxy", keep=args.keep) as ws:
        direct = ws.start(
            uvicorn_server(
                ws.dir,
                "proxy_clients:upstream_app",
                label="direct",
                cpus=cpus,
                ready_path=SIZES["1KB"],
                extra_args=app_dir,
            )
        )
        floor = ws.start(
            uvicorn_server(ws.dir, "proxy:floor_app", label="floor", cpus=cpus, extra_args=app_dir)
        )
        proxy = ws.start(
            uvicorn_server(
                ws.dir,
                "proxy_clients:proxy_app",
                label="proxy",
                factory=True,
                cpus=cpus,
                env={"PROXY_CLIENT": "lean", "PROXY_UPSTREAM": direct.url},
                ready_path=SIZES["1KB"],
                extra_args=app_dir,
            )
        )
        check_fast_loop(direct, floor, proxy)
        servers = {"direct": direct, "floor": floor, "proxy": proxy}
        results: dict[tuple[str, str], list[LoadResult]] = {}
        upstream_cpu: dict[tuple[str, str], list[float]] = {}
        for size in sizes:
            labels = ["direct", "proxy"] + (["floor"] if size == "1KB" else [])
            for label in labels:
                run_wrk(url_of(servers[label], size), connections=args.connections, duration=2)
            for r, order in rotations(labels, args.rounds):
                for label in order:
                    server = servers[label]
                    before = direct.cpu_seconds()
                    res = run_wrk(
                        url_of(server, size),
                        connections=args.connections,
                        duration=args.duration,
                        server=server,
                    )
                    up_us = (direct.cpu_seconds() - before) / max(res.requests, 1) * 1e6
                    results.setdefault((size, label), []).append(res)
                    upstream_cpu.setdefault((size, label), []).append(up_us)
                    print(
                        f"  {size} round {r + 1} {label:6} {fmt(res.rps, 0):>8} req/s "
                        f"p50 {res.p50_ms:7.2f} ms p99 {res.p99_ms:7.2f} ms "
                        f"cpu {fmt(res.server_cpu_us, 0):>5} µs/req"
                        + (f" (+ upstream {up_us:,.0f})" if label == "proxy" else "")
                        + (f" ERRORS {res.errors}" if res.failed else ""),
                        flush=True,
                    )
        report(results, upstream_cpu, sizes)
    return 0


def url_of(server: ServerProcess, size: str) -> str:
    return server.url + ("/" if server.label == "floor" else SIZES[size])


def report(
    results: dict[tuple[str, str], list[LoadResult]],
    upstream_cpu: dict[tuple[str, str], list[float]],
    sizes: list[str],
) -> None:
    rows = []
    ratios = []
    for size in sizes:
        for label in ("direct", "floor", "proxy"):
            runs = results.get((size, label))
            if not runs:
                continue
            rows.append(
                [
                    size,
                    label,
                    fmt(median(x.rps for x in runs), 0),
                    " / ".join(fmt(x.rps, 0) for x in runs),
                    fmt(median(x.p50_ms for x in runs), 2),
                    fmt(median(x.p99_ms for x in runs), 2),
                    fmt(median(x.server_cpu_us for x in runs), 0),
                    fmt(median(upstream_cpu[(size, label)]), 0) if label == "proxy" else "-",
                    sum(x.failed for x in runs),
                ]
            )
        p, d = results[(size, "proxy")], results[(size, "direct")]
        per_round = [ratio(a.rps, b.rps) for a, b in zip(p, d, strict=True)]
        ratios.append(
            [
                size,
                f"{ratio(median(x.rps for x in p), median(x.rps for x in d)):.2f}x",
                f"{median(per_round):.2f}x",
                f"{min(per_round):.2f}-{max(per_round):.2f}",
                "met" if median(per_round) >= GOAL else "NOT met",
            ]
        )
    print()
    print("## Throughput, latency and CPU (medians over rounds)")
    print(
        table(
            [
                "size",
                "server",
                "req/s",
                "per round",
                "p50 ms",
                "p99 ms",
                "CPU µs/req",
                "upstream CPU µs/req",
                "err",
            ],
            rows,
        )
    )
    print()
    print(f"## proxy / direct (goal >= {GOAL}x; nginx here: 0.78x 1 KB, 0.37x 1 MB)")
    print(
        table(
            ["size", "req/s ratio (medians)", "median of round ratios", "round range", "goal"],
            ratios,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
