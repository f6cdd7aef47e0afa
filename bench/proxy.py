"""The supervisor's proxy against nginx and HAProxy, in front of the same upstream.

Everything runs side by side for the whole run:

* direct:  the upstream, ``uvicorn proxy_clients:upstream_app`` (a tiny Starlette app,
           ``/apps/demo/ping`` = 1018 bytes of JSON, ``/apps/demo/big`` = 1 MiB);
* fast:    a multi-environment supervisor (``nocosup serve``, Redis, one worker whose
           ``ENVIRONMENT_PROXY_URL`` is the upstream) serving ``/apps/demo/...`` on its
           fast path with the lean lane (the defaults);
* express: the same with ``NOCOSUP_PROXY_LEAN_LANE=0``: the fast path's express lane;
* asgi:    the same with ``NOCOSUP_PROXY_FAST_PATH=0``: every request through ASGI;
* nginx:   Debian's nginx, one process (``master_process off``), keep-alive to the
           upstream, buffers large enough to hold 1 MB, the same X-Forwarded-* headers;
* haproxy: Debian's HAProxy, one thread, ``http-reuse always``, the same headers.

Each supervisor has its own worker and Redis key prefix (the workers only register: no
tenant traffic reaches them). wrk runs against each target in an order that rotates per
round. Printed per target: req/s, latency, the CPU µs per request of the proxy process
(user + system from /proc/PID/stat around each run) and of the upstream, then each
proxy's CPU per request as a ratio to nginx's in the same run. Issue 11's goal: fast
<= 1.25x nginx at 1 KB, and fast below HAProxy at 1 MB. Pinned by default: wrk on CPU 0,
every server on CPU 1 (a proxy and the upstream share that core).

    python bench/proxy.py [--rounds 3] [--duration 5] [--connections 32] [--no-pin]
        [--vary [target|header]] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import (
    Admin,
    LoadResult,
    ServerProcess,
    Workspace,
    check_fast_loop,
    fmt,
    free_port,
    median,
    purge_redis,
    redis_prefix,
    require_fast_uvicorn,
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
from proxy_clients import PREFIX, SIZES, start_upstream

#: Issue 11: the fast path's CPU per 1 KB request at most this many times nginx's.
GOAL_1KB = 1.25
APP = PREFIX.rsplit("/", 1)[1]
PROXIES = ("fast", "express", "asgi", "nginx", "haproxy")
#: The supervisors: label -> the settings that make it what it is.
SUPERVISORS = {
    "fast": {},
    "express": {"NOCOSUP_PROXY_LEAN_LANE": "0"},
    "asgi": {"NOCOSUP_PROXY_FAST_PATH": "0"},
}

_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    upstream worker {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://worker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Prefix {prefix};
            proxy_buffers 64 16k;
        }}
    }}
}}
"""

_HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
frontend front
    bind 127.0.0.1:{port}
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Prefix {prefix}
    default_backend worker
backend worker
    http-reuse always
    server upstream 127.0.0.1:{upstream}
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--sizes", default="1KB,1MB", help="comma-separated: 1KB,1MB")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for nocosup")
    p.add_argument("--no-pin", action="store_true", help="do not pin wrk and servers to CPUs")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    p.add_argument(
        "--vary",
        nargs="?",
        const="target",
        default="",
        choices=["target", "header"],
        help="every request distinct, nothing to replay on a connection: 'target' (the "
        "default) adds ?n=1, ?n=2, ...; 'header' sends X-N: 1, X-N: 2, ... (a browser's "
        "heads change so)",
    )
    return p.parse_args()


def tool_server(
    workdir: Path, label: str, argv: list[str], port: int, cpus: str | None
) -> ServerProcess:
    """nginx or HAProxy as a ServerProcess (ready when the proxied 1 KB answers 200)."""
    pin = [require_tool("taskset", "it ships in util-linux"), "-c", cpus] if cpus else []
    return ServerProcess(
        label, [*pin, *argv], {}, port, workdir / f"{label}.log", ready_path=SIZES["1KB"]
    )


def nginx_server(workdir: Path, upstream: int, cpus: str | None) -> ServerProcess:
    nginx = require_tool("nginx", "install it with `apt-get install -y nginx` (Debian)")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(dir=workdir, upstream=upstream, port=port, prefix=PREFIX))
    return tool_server(workdir, "nginx", [nginx, "-c", str(conf), "-p", str(workdir)], port, cpus)


def haproxy_server(workdir: Path, upstream: int, cpus: str | None) -> ServerProcess:
    haproxy = require_tool("haproxy", "install it with `apt-get install -y haproxy` (Debian)")
    port = free_port()
    conf = workdir / "haproxy.cfg"
    conf.write_text(_HAPROXY_CONF.format(upstream=upstream, port=port, prefix=PREFIX))
    return tool_server(workdir, "haproxy", [haproxy, "-f", str(conf), "-db"], port, cpus)


def nocosup_proxy(
    ws: Workspace,
    label: str,
    redis_url: str,
    upstream: ServerProcess,
    cpus: str | None,
    env: dict[str, str],
) -> tuple[ServerProcess, str]:
    """A supervisor (with the settings ``env``) and its worker, with the app ``demo`` on the
    worker's environment, whose proxy URL is ``upstream``; returns it and its prefix."""
    prefix = redis_prefix(f"proxy-{label}")
    supervisor = ws.start(
        supervisor_server(
            ws.dir,
            redis_url,
            prefix,
            label=label,
            cpus=cpus,
            env=env,
        )
    )
    ws.start(
        worker_server(
            ws.dir,
            redis_url,
            prefix,
            "env_a",
            label=f"{label}-worker",
            env={"ENVIRONMENT_PROXY_URL": upstream.url},
        )
    )
    admin = Admin(supervisor)
    try:
        admin.wait_environments({"env_a": 1})
        admin.create_app(APP, environments=["env_a"])
    finally:
        admin.close()
    return supervisor, prefix


def main() -> int:
    args = parse_args()
    require_wrk()
    require_fast_uvicorn()
    require_redis(args.redis_url)
    cpus = start_run(
        "nocosup's proxy vs nginx and HAProxy",
        args.no_pin,
        "wrk on CPU 0, all servers on CPU 1",
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds"
        + {"": "", "target": ", every request distinct (?n=...)"}.get(
            args.vary, ", every request distinct (X-N: ...)"
        ),
    )
    sizes = [s for s in args.sizes.split(",") if s]
    prefixes: list[str] = []
    try:
        with Workspace("proxy", keep=args.keep) as ws:
            direct = start_upstream(ws, cpus)
            servers = {"direct": direct}
            for label, env in SUPERVISORS.items():
                servers[label], prefix = nocosup_proxy(ws, label, args.redis_url, direct, cpus, env)
                prefixes.append(prefix)
            check_fast_loop(*servers.values())
            servers["nginx"] = ws.start(nginx_server(ws.dir, direct.port, cpus))
            servers["haproxy"] = ws.start(haproxy_server(ws.dir, direct.port, cpus))
            results = measure(servers, sizes, args)
            report(results, sizes)
    finally:
        for prefix in prefixes:
            purge_redis(args.redis_url, prefix)
    return 0


Results = dict[tuple[str, str], list[tuple[LoadResult, float]]]


def measure(servers: dict[str, ServerProcess], sizes: list[str], args: Any) -> Results:
    """(load result, upstream CPU µs/request) of every run, by (size, target)."""
    direct = servers["direct"]
    labels = list(servers)
    results: Results = {}
    for size in sizes:
        for label in labels:  # warm-up: connections, pools, caches
            run_wrk(servers[label].url + SIZES[size], connections=args.connections, duration=2)
        for r, order in rotations(labels, args.rounds):
            for label in order:
                server = servers[label]
                before = direct.cpu_seconds()
                res = run_wrk(
                    server.url + SIZES[size],
                    connections=args.connections,
                    duration=args.duration,
                    server=server,
                    vary=args.vary,
                )
                up_us = (direct.cpu_seconds() - before) / max(res.requests, 1) * 1e6
                results.setdefault((size, label), []).append((res, up_us))
                print(
                    f"  {size} round {r + 1} {label:7} {fmt(res.rps, 0):>8} req/s "
                    f"p50 {res.p50_ms:7.2f} ms p99 {res.p99_ms:7.2f} ms "
                    f"cpu {fmt(res.server_cpu_us, 1):>7} µs/req"
                    + (f" (+ upstream {up_us:,.0f})" if label != "direct" else "")
                    + (f" ERRORS {res.errors}" if res.failed else ""),
                    flush=True,
                )
    return results


def report(results: Results, sizes: list[str]) -> None:
    rows = []
    ratios = []
    for size in sizes:
        cpu = {}
        for label in ("direct", *PROXIES):
            runs = results.get((size, label))
            if not runs:
                continue
            cpu[label] = median(x.server_cpu_us for x, _ in runs)
            rows.append(
                [
                    size,
                    label,
                    fmt(median(x.rps for x, _ in runs), 0),
                    fmt(median(x.p50_ms for x, _ in runs), 2),
                    fmt(median(x.p99_ms for x, _ in runs), 2),
                    fmt(cpu[label], 1),
                    fmt(median(up for _, up in runs), 1) if label != "direct" else "-",
                    sum(x.failed for x, _ in runs),
                ]
            )
        nginx = cpu.get("nginx")
        for label in PROXIES:
            if label in cpu and nginx:
                per_round = [
                    (a.server_cpu_us or 0) / (b.server_cpu_us or 1)
                    for (a, _), (b, _) in zip(
                        results[(size, label)], results[(size, "nginx")], strict=True
                    )
                ]
                ratios.append(
                    [
                        size,
                        label,
                        f"{cpu[label] / nginx:.2f}x",
                        f"{min(per_round):.2f}-{max(per_round):.2f}",
                    ]
                )
    print()
    print("## Throughput, latency and CPU (medians over rounds)")
    print(
        table(
            [
                "size",
                "target",
                "req/s",
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
    print(
        f"## Proxy CPU per request / nginx's (goal: fast <= {GOAL_1KB}x at 1 KB, "
        "below haproxy at 1 MB)"
    )
    print(table(["size", "proxy", "CPU ratio (medians)", "round range"], ratios))


if __name__ == "__main__":
    sys.exit(main())
