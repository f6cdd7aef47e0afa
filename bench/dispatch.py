"""Host dispatch overhead: the starter app through ``nocosup serve`` vs served alone.

Two servers run side by side for the whole run, both pinned to CPU 1 (wrk and this script
on CPU 0; ``--no-pin`` lets the scheduler decide):

* host:   ``nocosup serve`` on embedded defaults, one app created and started through the
          admin API, requests to ``/apps/bench/api/...``;
* direct: ``uvicorn bench.standalone_starter:create_app --factory`` with the same uvicorn
          flags, requests to ``/api/...``.

Each round, for each endpoint (``/api/info``: no I/O, pure dispatch; ``/api/records``: one
SQLite query), runs wrk

* against both servers at once ("together"): they share CPU 1 fairly, so the ratio of
  their req/s is the inverse ratio of their CPU per request, and the machine's noise hits
  both in the same instants. This is the headline ratio.
* against each alone ("alone"), in an order that alternates by round: absolute req/s and
  latencies comparable with the baseline, but far noisier ratios on a shared machine.

An in-process section times one ASGI call through a Host vs to the bare app, without
sockets. Goal (issue 2): host/direct >= 0.9x requests/s on ``/api/info``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
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
    require_fast_uvicorn,
    require_wrk,
    rotations,
    run_wrk,
    run_wrk_concurrent,
    stalled,
    start_run,
    table,
    uvicorn_server,
)
from starlette.types import ASGIApp, Message, Scope

APP = "bench"
GOAL = 0.9
INPROC_ROUNDS = 15


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds per endpoint (default 5)")
    p.add_argument("--duration", type=float, default=3, help="seconds per wrk run (default 3)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--warmup", type=float, default=2, help="warm-up seconds per target")
    p.add_argument("--records", type=int, default=20, help="records seeded in each app")
    p.add_argument("--no-records", action="store_true", help="skip the /api/records endpoint")
    p.add_argument(
        "--inproc-calls", type=int, default=10000, help="calls per in-process round (0: skip)"
    )
    p.add_argument(
        "--no-control",
        action="store_true",
        help="skip the A/A check (a second direct server against the first, together)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin wrk and servers to CPUs")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


async def _inproc(workdir: Path, calls: int, rounds: int) -> dict[str, list[float]]:
    """µs per ASGI call of ``/api/info`` through a Host vs to the bare starter, in one loop.

    No sockets and no uvicorn: what remains is exactly the host's dispatch code, measured
    with far less noise than over HTTP. Rounds alternate host/direct.
    """
    from standalone_starter import create_app

    from nocosup.config import Settings
    from nocosup.host import Host
    from nocosup.lifespan import LifespanRunner

    def settings(name: str) -> Settings:
        return Settings.from_env(
            {
                "NOCOSUP_STORAGE_DIR": str(workdir / name),
                "NOCOSUP_ADMIN_TOKEN": "inproc-benchmark-token-0123456789abcdef",
                "NOCOSUP_LOAD_PLUGINS": "",
            }
        )

    host = Host(settings("inproc-host"))
    await host.start()
    try:
        supervisor = host.role.supervisor
        await supervisor.create_app({"name": APP})
        await supervisor.start_app(APP)
        direct = create_app(settings("inproc-direct"), APP)
        lifespan = LifespanRunner(direct, "direct")
        await lifespan.startup()
        try:
            return await _inproc_rounds(host, direct, lifespan.state, calls, rounds)
        finally:
            await lifespan.shutdown()
    finally:
        await host.stop()


async def _inproc_rounds(
    host: ASGIApp, direct: ASGIApp, state: dict[str, Any], calls: int, rounds: int
) -> dict[str, list[float]]:
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    def scope(path: str, app_state: dict[str, Any]) -> Scope:
        """What uvicorn passes for a wrk GET (state copied per request, as uvicorn does)."""
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 40000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8000")],
            "state": app_state.copy(),
        }

    targets = {
        "host": (host, f"/apps/{APP}/api/info", {}),
        "direct": (direct, "/api/info", state),
    }
    out: dict[str, list[float]] = {"host": [], "direct": []}
    for label, (app, path, st) in targets.items():
        for _ in range(calls // 10 + 1):
            await app(scope(path, st), receive, send)
        if set(statuses) != {200}:
            raise RuntimeError(f"in-process {label} answered {sorted(set(statuses))}")
    for _, order in rotations(list(targets), rounds):
        for label in order:
            app, path, st = targets[label]
            began = time.perf_counter()
            for _ in range(calls):
                await app(scope(path, st), receive, send)
            out[label].append((time.perf_counter() - began) / calls * 1e6)
    return out


def _direct_server(workdir: Path, label: str, cpus: str | None) -> ServerProcess:
    """The starter app alone under uvicorn, with its own SQLite storage."""
    return uvicorn_server(
        workdir,
        "bench.standalone_starter:create_app",
        label=label,
        factory=True,
        cpus=cpus,
        env={"NOCOSUP_STORAGE_DIR": str(workdir / f"{label}-storage"), "BENCH_APP_NAME": APP},
        ready_path="/api/info",
    )


def seed(admin: Admin, base: str, count: int) -> None:
    for i in range(count):
        admin.call("POST", f"{base}/api/records", {"title": f"record {i}", "data": {"i": i}})


def main() -> int:
    args = parse_args()
    require_wrk()
    require_fast_uvicorn()
    cpus = start_run(
        "dispatch: host vs direct",
        args.no_pin,
        "wrk on CPU 0, both servers on CPU 1",
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds",
    )
    with Workspace("dispatch", keep=args.keep) as ws:
        inproc: dict[str, list[float]] = {}
        if args.inproc_calls:
            inproc = uvloop.run(_inproc(ws.dir, args.inproc_calls, INPROC_ROUNDS))
            print(
                f"  in-process /api/info µs/call (min of {INPROC_ROUNDS} rounds): "
                f"host {min(inproc['host']):.2f}, direct {min(inproc['direct']):.2f}",
                flush=True,
            )
        host = ws.start(nocosup_server(ws.dir, label="host", cpus=cpus))
        direct = ws.start(_direct_server(ws.dir, "direct", cpus))
        control = ws.start(_direct_server(ws.dir, "direct2", cpus)) if not args.no_control else None
        check_fast_loop(host, direct, *([control] if control else []))
        admin = Admin(host)
        admin.create_app(APP)
        admin.start_app(APP)
        bases = {"host": f"/apps/{APP}", "direct": ""}
        servers = {"host": host, "direct": direct}
        # Seed through each server's HTTP path so both databases hold the same rows
        # (absolute URLs: the admin client's base URL is the host's).
        for label, server in servers.items():
            seed(admin, server.url + bases[label], args.records)
        endpoints = ["/api/info"] + ([] if args.no_records else ["/api/records"])
        for endpoint in endpoints:
            for label, server in servers.items():
                url = server.url + bases[label] + endpoint
                body = admin.http.get(url)
                if body.status_code != 200:
                    raise RuntimeError(f"{url} -> {body.status_code}: {body.text[:300]}")
                run_wrk(url, connections=args.connections, duration=args.warmup)
        admin.close()

        alone: dict[tuple[str, str], list[LoadResult]] = {}
        together: dict[tuple[str, str], list[LoadResult]] = {}
        for endpoint in endpoints:
            loads = {
                label: Load(server.url + bases[label] + endpoint, server)
                for label, server in servers.items()
            }
            for r, order in rotations(["host", "direct"], args.rounds):
                # Both at once on the shared core: the steady ratio.
                both = run_wrk_concurrent(
                    [loads[label] for label in order],
                    connections=args.connections,
                    duration=args.duration,
                )
                for label, res in zip(order, both, strict=True):
                    together.setdefault((endpoint, label), []).append(res)
                    _line(endpoint, r, label, "together", res)
                # One at a time: absolute req/s and latency, comparable with the baseline.
                for label in order:
                    res = run_wrk(
                        loads[label].url,
                        connections=args.connections,
                        duration=args.duration,
                        server=servers[label],
                    )
                    alone.setdefault((endpoint, label), []).append(res)
                    _line(endpoint, r, label, "alone", res)
        checks = _control(control, direct, args) if control is not None else []
        report(alone, together, endpoints, servers, inproc, checks)
    return 0


def _control(
    control: ServerProcess, direct: ServerProcess, args: argparse.Namespace
) -> list[float]:
    """A/A check: two identical direct servers together; their ratio should be 1.0."""
    a = Load(control.url + "/api/info", control)
    b = Load(direct.url + "/api/info", direct)
    run_wrk_concurrent([a, b], connections=args.connections, duration=args.warmup)
    runs: dict[str, list[LoadResult]] = {"a": [], "b": []}
    for r in range(args.rounds):
        flip = r % 2 == 1
        both = run_wrk_concurrent(
            [b, a] if flip else [a, b], connections=args.connections, duration=args.duration
        )
        if flip:
            both.reverse()
        runs["a"].append(both[0])
        runs["b"].append(both[1])
    return paired_ratios(runs["a"], runs["b"])[0]


def _range(runs: list[LoadResult]) -> str:
    """min-max req/s without stalled runs (their count is appended)."""
    bad = stalled(runs)
    kept = [x.rps for i, x in enumerate(runs) if i not in bad]
    text = fmt(min(kept), 0) + "-" + fmt(max(kept), 0)
    return text + (f" (+{len(bad)} stalled)" if bad else "")


def _line(endpoint: str, r: int, label: str, mode: str, res: LoadResult) -> None:
    print(
        f"  {endpoint:13} round {r + 1} {mode:8} {label:6} {fmt(res.rps, 0):>8} req/s "
        f"p50 {res.p50_ms:6.2f} ms p99 {res.p99_ms:6.2f} ms "
        f"cpu {fmt(res.server_cpu_us, 1)} µs/req" + (f" ERRORS {res.errors}" if res.failed else ""),
        flush=True,
    )


def _paired(runs: dict[tuple[str, str], list[LoadResult]], endpoint: str) -> list[float]:
    """host/direct req/s of each round (the pair ran together or back to back), leaving
    out rounds where the machine stalled."""
    ratios, left_out = paired_ratios(runs[(endpoint, "host")], runs[(endpoint, "direct")])
    if left_out:
        print(f"note: {endpoint}: {left_out} round(s) left out of a ratio (a run stalled)")
    return ratios


def report(
    alone: dict[tuple[str, str], list[LoadResult]],
    together: dict[tuple[str, str], list[LoadResult]],
    endpoints: list[str],
    servers: dict[str, ServerProcess],
    inproc: dict[str, list[float]],
    checks: list[float],
) -> None:
    """Print the tables. Ratios are medians of per-round (paired) ratios, so slow drifts of
    the shared machine cancel out; "together" pairs share the very same instants."""
    rows = []
    for endpoint in endpoints:
        for label in ("host", "direct"):
            runs = alone[(endpoint, label)]
            errors = sum(x.failed for x in [*runs, *together[(endpoint, label)]])
            rows.append(
                [
                    endpoint,
                    label,
                    fmt(median(x.rps for x in runs), 0),
                    _range(runs),
                    fmt(median(x.p50_ms for x in runs), 2),
                    fmt(median(x.p99_ms for x in runs), 2),
                    fmt(median(x.server_cpu_us for x in runs), 1),
                    errors,
                ]
            )
    print()
    print("## Each server alone (medians over rounds)")
    print(
        table(
            ["endpoint", "server", "req/s", "range", "p50 ms", "p99 ms", "CPU µs/req", "err"],
            rows,
        )
    )
    ratios = []
    headline: dict[str, float] = {}
    for endpoint in endpoints:
        conc = _paired(together, endpoint)
        alt = _paired(alone, endpoint)
        headline[endpoint] = median(conc)
        cpu_h = median(x.server_cpu_us for x in together[(endpoint, "host")])
        cpu_d = median(x.server_cpu_us for x in together[(endpoint, "direct")])
        ratios.append(
            [
                endpoint,
                f"{median(conc):.3f}x",
                f"{min(conc):.3f}-{max(conc):.3f}",
                fmt(cpu_h - cpu_d, 1),
                f"{median(alt):.2f}x",
                f"{min(alt):.2f}-{max(alt):.2f}",
            ]
        )
    print()
    print("## host / direct req/s (median of per-round ratios)")
    print(
        table(
            [
                "endpoint",
                "together (headline)",
                "together range",
                "host extra CPU µs/req",
                "alone",
                "alone range",
            ],
            ratios,
        )
    )
    if inproc:
        print()
        print("## In-process ASGI call of /api/info (no sockets, no uvicorn)")
        print(
            table(
                ["statistic", "host µs/call", "direct µs/call", "host extra µs/call"],
                [
                    [
                        f"{name} of {len(inproc['host'])} rounds",
                        fmt(pick(inproc["host"]), 2),
                        fmt(pick(inproc["direct"]), 2),
                        fmt(pick(inproc["host"]) - pick(inproc["direct"]), 2),
                    ]
                    for name, pick in (("min", min), ("median", median))
                ],
            )
        )
    if checks:
        print(
            f"\nA/A control, two identical direct servers together on /api/info: "
            f"{median(checks):.3f}x ({min(checks):.3f}-{max(checks):.3f}): the method's resolution"
        )
    info = headline["/api/info"]
    verdict = "met" if info >= GOAL else "NOT met"
    print(f"\ngoal host/direct >= {GOAL}x req/s on /api/info (together): {verdict} ({info:.3f}x)")
    print(
        "server RSS after the run: "
        + ", ".join(f"{k} {v.rss_kib() / 1024:.1f} MiB" for k, v in servers.items())
    )


if __name__ == "__main__":
    sys.exit(main())
