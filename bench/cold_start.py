"""Cold start: from ``idle`` to the first byte of ``/api/info``, beside a warm request.

One app with ``options.idleTimeout`` of 0.1 s runs in each placement:

* shared memory: ``nocosup serve`` on embedded defaults, the app in its process;
* proxy:         a supervisor (``APP_PROCESS_ADAPTER=remote``) and one worker behind Redis,
                 requests sent to the supervisor, which forwards them to the worker.

Each sample waits until the app shows ``idle`` in the admin API, then times one request
(the wake: the boot, the app's lifespan start-up, the answer) and at once a second one
(warm), on the same keep-alive connection, from sending the request to the response's
first byte. Printed: p50/p99 of both and what a wake adds. Issue 10's goal: a wake adds
at most 1 ms p50 in shared memory and 3 ms through the proxy.

    python bench/cold_start.py [--samples 200] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx
from common import (
    Admin,
    ServerProcess,
    Workspace,
    fmt,
    nocosup_server,
    percentile,
    purge_redis,
    redis_prefix,
    require_redis,
    start_run,
    supervisor_server,
    table,
    worker_server,
)

APP = "cold"
ENV = "env_a"
IDLE_TIMEOUT = 0.1
GOALS_MS = {"shared memory": 1.0, "proxy": 3.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=200, help="wakes per placement (200)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis for the proxy")
    p.add_argument("--no-proxy", action="store_true", help="shared memory only (no Redis)")
    p.add_argument("--no-pin", action="store_true", help="do not pin clients and servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


def ttfb(client: httpx.Client, path: str) -> float:
    """Seconds from sending GET ``path`` to its first response byte (the status line)."""
    began = time.perf_counter()
    with client.stream("GET", path) as response:
        elapsed = time.perf_counter() - began
        response.read()
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} -> {response.status_code}: {response.text[:300]}")
    return elapsed


def wait_idle(admin: Admin, env: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = admin.call("GET", f"/api/apps/{APP}")[1].json()["statuses"][env]
        if status == "idle":
            return
        time.sleep(0.01)
    raise RuntimeError(f"{APP} never went idle in {env} (last status {status!r})")


def measure(server: ServerProcess, env: str, samples: int) -> dict[str, list[float]]:
    admin = Admin(server)
    admin.create_app(APP, options={"idleTimeout": IDLE_TIMEOUT}, **environments(env))
    path = f"/apps/{APP}/api/info"
    out: dict[str, list[float]] = {"wake": [], "warm": []}
    with httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        ttfb(client, path)  # first boot (creates nothing more: the database exists)
        for i in range(samples):
            wait_idle(admin, env)
            out["wake"].append(ttfb(client, path))
            out["warm"].append(ttfb(client, path))
            if (i + 1) % 50 == 0:
                print(f"  {server.label}: {i + 1}/{samples}", flush=True)
    admin.close()
    return out


def environments(env: str) -> dict[str, Any]:
    return {} if env == "local" else {"environments": [env]}


def main() -> int:
    args = parse_args()
    cpus = start_run(
        f"cold_start: {args.samples} wakes per placement",
        args.no_pin,
        "this client on CPU 0, servers on CPU 1",
    )
    results: dict[str, dict[str, list[float]]] = {}
    with Workspace("cold-start", keep=args.keep) as ws:
        shared = ws.start(nocosup_server(ws.dir, label="shared", cpus=cpus))
        results["shared memory"] = measure(shared, "local", args.samples)
        if not args.no_proxy:
            require_redis(args.redis_url)
            prefix = redis_prefix("cold")
            try:
                sup = ws.start(
                    supervisor_server(ws.dir, args.redis_url, prefix, interval=0.5, cpus=cpus)
                )
                worker = ws.start(
                    worker_server(ws.dir, args.redis_url, prefix, ENV, interval=0.5, cpus=cpus)
                )
                Admin(sup).wait_environments({ENV: 1})
                results["proxy"] = measure(sup, ENV, args.samples)
                worker.stop()
                sup.stop()
            finally:
                purge_redis(args.redis_url, prefix)
    print()
    rows = []
    for placement, values in results.items():
        wake, warm = values["wake"], values["warm"]
        added = percentile(wake, 50) - percentile(warm, 50)
        rows.append(
            [
                placement,
                len(wake),
                fmt(percentile(warm, 50) * 1000, 2),
                fmt(percentile(warm, 99) * 1000, 2),
                fmt(percentile(wake, 50) * 1000, 2),
                fmt(percentile(wake, 99) * 1000, 2),
                fmt(added * 1000, 2),
                "met" if added * 1000 <= GOALS_MS[placement] else "NOT met",
            ]
        )
    print("## Wake from idle vs warm, time to first byte of /api/info (ms)")
    print(
        table(
            [
                "placement",
                "samples",
                "warm p50",
                "warm p99",
                "wake p50",
                "wake p99",
                "wake adds (p50)",
                "goal",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
