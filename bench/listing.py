"""Listing at scale: ``GET /api/apps`` pages with N apps registered (default 10,000).

The registry of a ``nocosup serve`` on embedded defaults is filled directly (the rows
``POST /api/apps`` would write, without creating N SQLite files), then the server starts
on it and this script times, client-side over HTTP with keep-alive, samples interleaved:

* the first page of 100, a page deep in the list (cursor near the end) and a page of 1000;
* a name-prefix filter (a range scan) and a status filter (reads every app's status);
* beside them, ``GET /api/apps/{name}`` of one app as the floor of any admin call.

It prints p50/p99 per query and the deep/first page ratio (a range scan should keep it
near 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from common import Admin, Workspace, fmt, nocosup_server, percentile, ratio, start_run, table

from nocosup.config import Settings
from nocosup.db import connect_registry
from nocosup.listing import encode_cursor
from nocosup.provisioning import SqliteProvisioner
from nocosup.registry import AppRecord, Registry


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", "--apps", type=int, default=10_000, help="apps registered (10000)")
    p.add_argument("--samples", type=int, default=200, help="requests per query (200)")
    p.add_argument("--no-pin", action="store_true", help="do not pin clients and servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


def app_name(i: int) -> str:
    return f"app{i:05d}"


async def seed(storage: Path, n: int) -> None:
    """Write ``n`` app rows, as the supervisor would on create, in one transaction (each
    app's SQLite file is made by its first boot, in the directory made here)."""
    settings = Settings(storage_dir=storage)
    sqlite = SqliteProvisioner(settings)
    sqlite.files.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = await connect_registry(settings)
    try:
        registry = Registry(db)
        await registry.migrate()
        async with db.transaction():
            for i in range(n):
                name = app_name(i)
                # no explicit dbProvisioner: the spec is stored without one (spec_for)
                spec = replace(sqlite.spec(name, "new_database"), provisioner=None)
                database = spec.to_json()
                options = {"startMode": "on_first_request"}
                await registry.insert(AppRecord(name, name, ["local"], options, database))
    finally:
        await db.disconnect()


def main() -> int:
    args = parse_args()
    if args.apps < 200:
        print("bench: --apps must be at least 200", file=sys.stderr)
        return 2
    n = args.apps
    cpus = start_run(f"listing: N={n}", args.no_pin, "client on CPU 0, server on CPU 1")
    with Workspace("listing", keep=args.keep) as ws:
        server = nocosup_server(ws.dir, label="listing", cpus=cpus)
        storage = Path(server.env["NOCOSUP_STORAGE_DIR"])
        storage.mkdir(mode=0o700, parents=True)
        asyncio.run(seed(storage, n))
        ws.start(server)
        admin = Admin(server)
        try:
            body = admin.call("GET", "/api/apps?limit=1")[1].json()
            if body["total"] != n:
                raise RuntimeError(f"expected {n} apps, the API counts {body['total']}")
            deep = encode_cursor(app_name(n - 150))
            queries = {
                "first page of 100": "/api/apps?limit=100",
                f"page of 100 after app #{n - 150}": f"/api/apps?limit=100&cursor={deep}",
                "page of 1000": "/api/apps?limit=1000",
                "prefix filter (100 matches)": f"/api/apps?limit=100&prefix={app_name(0)[:-2]}",
                f"status filter (scans {n})": "/api/apps?limit=100&status=idle",
                "GET /api/apps/{name}": f"/api/apps/{app_name(n // 2)}",
            }
            for path in queries.values():  # warm up every query
                for _ in range(5):
                    admin.call("GET", path)
            times: dict[str, list[float]] = {label: [] for label in queries}
            sizes: dict[str, int] = {}
            for k in range(args.samples):
                order = list(queries.items())
                for label, path in order if k % 2 == 0 else reversed(order):
                    elapsed, response = admin.call("GET", path)
                    times[label].append(elapsed)
                    sizes[label] = len(response.content)
        finally:
            admin.close()
    rows = [
        [
            label,
            f"{sizes[label]:,}",
            fmt(percentile(t, 50) * 1000, 2),
            fmt(percentile(t, 99) * 1000, 2),
        ]
        for label, t in times.items()
    ]
    print()
    print(table(["query", "bytes", "p50 ms", "p99 ms"], rows))
    first = percentile(times["first page of 100"], 50)
    deep_p50 = percentile(times[f"page of 100 after app #{n - 150}"], 50)
    print(f"deep page / first page, p50: {ratio(deep_p50, first):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
