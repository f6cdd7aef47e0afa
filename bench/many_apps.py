"""Many apps in one host: memory per app, create/start times, admin list latency, dispatch.

Two ``nocosup serve`` processes on embedded defaults run side by side for the whole run,
both pinned to CPU 1 (this script, its HTTP client and wrk on CPU 0; ``--no-pin`` lets the
scheduler decide):

* one:  a single app registered and running;
* many: N apps (default 1000) created and started one after the other through the admin
  API, as an operator's script would; each then serves one request.

It reports the server's RSS (``/proc/<pid>/status`` VmRSS) after each phase and per app,
the client-timed create / start / first-request latency per app (p50/p99), ``GET /api/apps``
latency at 1 and at N apps (samples interleaved between the two servers), and dispatch to
app #1 and app #N with N apps registered vs app #1 with one app registered. Dispatch
pairs run at the same time on the shared core ("together", the steady ratio), then each
alone (absolute req/s and latency).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from common import (
    Admin,
    Load,
    LoadResult,
    ServerProcess,
    Workspace,
    check_fast_loop,
    fmt,
    median,
    nocosup_server,
    paired_ratios,
    percentile,
    ratio,
    require_fast_uvicorn,
    require_wrk,
    run_wrk,
    run_wrk_concurrent,
    start_run,
    table,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", "--apps", type=int, default=1000, help="apps in the big host (1000)")
    p.add_argument("--rounds", type=int, default=3, help="dispatch rounds (default 3)")
    p.add_argument("--duration", type=float, default=3, help="seconds per wrk run (default 3)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--list-samples", type=int, default=30, help="GET /api/apps per server")
    p.add_argument(
        "--idle", type=float, default=12, help="seconds idle before the last RSS reading (12)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin clients and servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


def app_name(i: int) -> str:
    return f"app{i:05d}"


def info_path(i: int) -> str:
    return f"/apps/{app_name(i)}/api/info"


def timed_phase(
    label: str, count: int, step: Callable[[int], float], server: ServerProcess
) -> tuple[list[float], int]:
    """Run ``step(i)`` for apps 2..count; returns (seconds per call, RSS KiB after)."""
    began = time.perf_counter()
    times = []
    for i in range(2, count + 1):
        times.append(step(i))
        if i % 200 == 0:
            print(f"  {label}: {i}/{count} ({time.perf_counter() - began:.1f} s)", flush=True)
    print(f"  {label}: done in {time.perf_counter() - began:.1f} s", flush=True)
    return times, server.rss_kib()


def main() -> int:
    args = parse_args()
    if args.apps < 2:
        print("bench: --apps must be at least 2", file=sys.stderr)
        return 2
    require_wrk()
    require_fast_uvicorn()
    n = args.apps
    cpus = start_run(
        f"many_apps: N={n}", args.no_pin, "clients and wrk on CPU 0, both servers on CPU 1"
    )
    with Workspace("many-apps", keep=args.keep) as ws:
        one = ws.start(nocosup_server(ws.dir, label="one", cpus=cpus))
        many = ws.start(nocosup_server(ws.dir, label="many", cpus=cpus))
        check_fast_loop(one, many)
        rss: dict[str, int] = {"ready, no app": many.rss_kib()}
        admins = {"one": Admin(one), "many": Admin(many)}
        for admin in admins.values():
            admin.create_app(app_name(1))
            admin.start_app(app_name(1))
            for _ in range(50):
                admin.call("GET", info_path(1))
        rss["app #1 running"] = many.rss_kib()
        base_threads, base_fds = many.threads(), many.open_fds()

        admin = admins["many"]
        create_t, rss["N created"] = timed_phase(
            "create", n, lambda i: admin.create_app(app_name(i)), many
        )
        start_t, rss["N started"] = timed_phase(
            "start", n, lambda i: admin.start_app(app_name(i)), many
        )
        first_t, rss["N served 1 request"] = timed_phase(
            "first request", n, lambda i: admin.call("GET", info_path(i))[0], many
        )
        busy_threads = many.threads()
        # tenants' SQLite connections (a thread each) close after 10 s without a query
        time.sleep(args.idle)
        rss[f"N running, idle {args.idle:g} s"] = many.rss_kib()
        total = admin.call("GET", "/api/apps?limit=1")[1].json()["total"]
        running = admin.call("GET", "/api/apps?limit=1&status=running")[1].json()["total"]
        if total != n or running != n:
            raise RuntimeError(f"expected {n} running apps, got {total} ({running} running)")

        list_t: dict[str, list[float]] = {"one": [], "many": []}
        sizes: dict[str, int] = {}
        for k in range(args.list_samples):
            for label in ("one", "many") if k % 2 == 0 else ("many", "one"):
                elapsed, response = admins[label].call("GET", "/api/apps")
                list_t[label].append(elapsed)
                sizes[label] = len(response.content)
        get_t: dict[str, list[float]] = {"one": [], "many": []}
        for k in range(args.list_samples):
            for label in ("one", "many") if k % 2 == 0 else ("many", "one"):
                name = app_name(1 if label == "one" else n)
                get_t[label].append(admins[label].call("GET", f"/api/apps/{name}")[0])
        for a in admins.values():
            a.close()

        dispatch = measure_dispatch(one, many, n, args)
        print()
        report_memory(rss, n, base_threads, base_fds, many, busy_threads)
        report_times(n, create_t, start_t, first_t, list_t, get_t, sizes)
        report_dispatch(dispatch, n)
    return 0


def measure_dispatch(
    one: ServerProcess, many: ServerProcess, n: int, args: argparse.Namespace
) -> dict[str, list[LoadResult]]:
    """Rounds of: (one/#1 with many/#1) together, (one/#1 with many/#N) together, then the
    three alone. Keys: 'pairN:one', 'pairN:many' for the together runs, target names alone."""
    targets = {
        "one #1": Load(one.url + info_path(1), one),
        "many #1": Load(many.url + info_path(1), many),
        f"many #{n}": Load(many.url + info_path(n), many),
    }
    for load in targets.values():
        run_wrk(load.url, connections=args.connections, duration=1)
    out: dict[str, list[LoadResult]] = {}
    for r in range(args.rounds):
        for other in ("many #1", f"many #{n}"):
            pair = [targets["one #1"], targets[other]]
            if r % 2:
                pair.reverse()
            results = run_wrk_concurrent(pair, connections=args.connections, duration=args.duration)
            if r % 2:
                results.reverse()
            out.setdefault(f"{other}|together:one", []).append(results[0])
            out.setdefault(f"{other}|together:many", []).append(results[1])
            print(
                f"  round {r + 1} together: one #1 {fmt(results[0].rps, 0)} req/s, "
                f"{other} {fmt(results[1].rps, 0)} req/s",
                flush=True,
            )
        names = list(targets)
        k = r % len(names)
        for name in names[k:] + names[:k]:
            load = targets[name]
            res = run_wrk(
                load.url, connections=args.connections, duration=args.duration, server=load.server
            )
            out.setdefault(name, []).append(res)
            print(
                f"  round {r + 1} alone: {name} {fmt(res.rps, 0)} req/s "
                f"p50 {res.p50_ms:.2f} ms p99 {res.p99_ms:.2f} ms"
                + (f" ERRORS {res.errors}" if res.failed else ""),
                flush=True,
            )
    return out


def report_memory(
    rss: dict[str, int],
    n: int,
    base_threads: int,
    base_fds: int,
    many: ServerProcess,
    busy_threads: int,
) -> None:
    base = rss["app #1 running"]
    rows = []
    for phase, kib in rss.items():
        per_app = (kib - base) / (n - 1) if phase.startswith("N ") else None
        rows.append([phase, fmt(kib / 1024, 1), fmt(per_app, 1)])
    print("## Memory of the many-apps host (VmRSS)")
    print(table(["after", "RSS MiB", f"KiB per app (vs app #1 running, /{n - 1})"], rows))
    print(
        f"threads {base_threads} -> {busy_threads} just after the requests -> "
        f"{many.threads()} idle; open fds {base_fds} -> {many.open_fds()} idle "
        f"(1 app -> {n} apps)"
    )


def report_times(
    n: int,
    create_t: list[float],
    start_t: list[float],
    first_t: list[float],
    list_t: dict[str, list[float]],
    get_t: dict[str, list[float]],
    sizes: dict[str, int],
) -> None:
    def row(label: str, values: list[float]) -> list[str | int]:
        return [
            label,
            len(values),
            fmt(percentile(values, 50) * 1000, 2),
            fmt(percentile(values, 99) * 1000, 2),
        ]

    rows = [
        row(f"POST /api/apps (create, apps 2..{n})", create_t),
        row(f"POST /api/apps/{{name}}/start (apps 2..{n})", start_t),
        row("first GET /apps/{name}/api/info after start", first_t),
        row("GET /api/apps, 1 app", list_t["one"]),
        row(f"GET /api/apps (a page of 100), {n} apps ({sizes['many']:,} B)", list_t["many"]),
        row("GET /api/apps/{name}, 1 app", get_t["one"]),
        row(f"GET /api/apps/{{name}}, {n} apps", get_t["many"]),
    ]
    print()
    print("## Admin operations, timed by the client (sequential, keep-alive)")
    print(table(["operation", "samples", "p50 ms", "p99 ms"], rows))
    print(
        f"GET /api/apps at {n} apps / at 1 app, p50: "
        f"{ratio(percentile(list_t['many'], 50), percentile(list_t['one'], 50)):.1f}x; "
        f"create+start of {n - 1} apps took {sum(create_t) + sum(start_t):.1f} s"
    )


def report_dispatch(out: dict[str, list[LoadResult]], n: int) -> None:
    rows = []
    for name in ("one #1", "many #1", f"many #{n}"):
        runs = out[name]
        rows.append(
            [
                name,
                fmt(median(x.rps for x in runs), 0),
                fmt(median(x.p50_ms for x in runs), 2),
                fmt(median(x.p99_ms for x in runs), 2),
                fmt(median(x.server_cpu_us for x in runs), 1),
                sum(x.failed for x in runs),
            ]
        )
    print()
    print("## Dispatch to /apps/{name}/api/info, each target alone (medians)")
    print(table(["target", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "err"], rows))
    ratios = []
    for other in ("many #1", f"many #{n}"):
        mine = out[f"{other}|together:many"]
        base = out[f"{other}|together:one"]
        per_round, left_out = paired_ratios(mine, base)
        if left_out:
            print(f"note: {other}: {left_out} round(s) left out of the ratio (a run stalled)")
        alone = ratio(median(x.rps for x in out[other]), median(x.rps for x in out["one #1"]))
        errors = sum(x.failed for x in mine + base)
        ratios.append(
            [
                f"{other} ({n} apps) / one #1 (1 app)",
                f"{median(per_round):.3f}x",
                f"{min(per_round):.3f}-{max(per_round):.3f}",
                f"{alone:.2f}x",
                errors,
            ]
        )
    print()
    print("## Dispatch at N apps vs 1 app, req/s ratio")
    print(table(["pair", "together (median)", "together range", "alone (medians)", "err"], ratios))


if __name__ == "__main__":
    sys.exit(main())
