"""Proxy client candidates side by side: which HTTP client should nocosup's proxy use?

Every candidate runs inside the same raw-ASGI shell, ``nocosup.proxy.Proxy``, which takes
any :class:`nocosup.proxy_client.ProxyClient`; only the client differs:

* ``lean``: ``nocosup.proxy_client.LeanClient`` (asyncio Protocol + httptools parser +
  keep-alive pool; the default);
* ``aiohttp``: a shared ``aiohttp.ClientSession`` (no cookie jar, no decompression);
* ``httpx-aiohttp``: ``httpx.AsyncClient`` on the aiohttp transport of ``httpx-aiohttp``;
* ``httpx``: ``httpx.AsyncClient`` with its default transport (httpcore).

Every proxy process gets ``keep_large_buffers_on_heap()`` (the lean client's default), so
the comparison is about the clients, not glibc's malloc. One upstream (uvicorn + a tiny
Starlette app: ``/apps/demo/ping`` answers 1018 bytes of JSON, ``/apps/demo/big`` 1 MiB),
one proxy process per candidate, all running at once, and ``wrk`` against each in an
order that rotates per round, plus ``direct`` to the upstream.
Printed: req/s (medians of rounds), throughput ratio vs direct, and proxy CPU µs/request
(from /proc around each run). Pinned by default: wrk on CPU 0, every server on CPU 1.

    python bench/proxy_clients.py [--rounds 3] [--duration 5] [--connections 32]

The adapters below are also what a later swap would start from; they live here, not in
nocosup, so nocosup does not depend on aiohttp or httpx-aiohttp.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nocosup.proxy import Proxy
from nocosup.proxy_client import (
    Body,
    ProxyClient,
    Upstream,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeoutError,
    keep_large_buffers_on_heap,
)

BENCH_DIR = Path(__file__).resolve().parent
PREFIX = "/apps/demo"
SIZES = {"1KB": PREFIX + "/ping", "1MB": PREFIX + "/big"}
TIMEOUTS = {"connect": 5.0, "read": 60.0, "write": 60.0, "pool": 10.0}
LIMIT = 100

# ------------------------------------------------------------------- the upstream app

_PING = (b'{"status":"ok","data":"' + b"x" * 994 + b'"}')[:1018]
_BIG = os.urandom(1024 * 1024)


async def _ping(request: Request) -> Response:
    return Response(_PING, media_type="application/json")


async def _big(request: Request) -> Response:
    return Response(_BIG, media_type="application/octet-stream")


#: ``uvicorn proxy_clients:upstream_app --app-dir bench``
upstream_app = Starlette(routes=[Route(SIZES["1KB"], _ping), Route(SIZES["1MB"], _big)])


# ------------------------------------------------------------------------- adapters


class HttpxClient(ProxyClient):
    """``httpx.AsyncClient`` behind the proxy seam (default transport unless given)."""

    def __init__(self, transport: Any = None) -> None:
        import httpx

        self.httpx = httpx
        self.client = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(**TIMEOUTS),
            limits=httpx.Limits(max_connections=LIMIT, max_keepalive_connections=LIMIT),
            transport=transport,
            follow_redirects=False,
        )

    async def request(
        self, method: str, upstream: Upstream, target: bytes, headers: Any, body: Body = None
    ) -> UpstreamResponse:
        httpx = self.httpx
        req = self.client.build_request(
            method, upstream.url + target.decode("latin-1"), headers=headers, content=body
        )
        try:
            response = await self.client.send(req, stream=True)
        except httpx.ConnectError as exc:
            raise UpstreamConnectError(str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("read", str(exc)) from exc
        except httpx.TransportError as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        self.client.cookies.clear()  # never keep what an upstream set
        return _HttpxResponse(response, httpx)

    async def aclose(self) -> None:
        await self.client.aclose()


class _HttpxResponse(UpstreamResponse):
    def __init__(self, response: Any, httpx: Any) -> None:
        self._response = response
        self._chunks = response.aiter_raw()
        self._httpx = httpx
        self.status = response.status_code
        self.headers = [(k.lower(), v) for k, v in response.headers.raw]

    @property
    def at_eof(self) -> bool:
        return False

    async def read(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return b""
        except self._httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("read", str(exc)) from exc
        except self._httpx.TransportError as exc:
            raise UpstreamProtocolError(str(exc)) from exc

    def abort(self) -> None:
        """Nothing to do early: ``aclose`` in the proxy's ``finally`` closes the stream."""

    async def aclose(self) -> None:
        await self._response.aclose()


class AiohttpClient(ProxyClient):
    """A shared ``aiohttp.ClientSession`` behind the proxy seam."""

    def __init__(self) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=LIMIT, limit_per_host=LIMIT, keepalive_timeout=4),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=TIMEOUTS["connect"], sock_read=TIMEOUTS["read"]
            ),
        )

    async def request(
        self, method: str, upstream: Upstream, target: bytes, headers: Any, body: Body = None
    ) -> UpstreamResponse:
        import yarl

        aiohttp = self.aiohttp
        url = yarl.URL(upstream.url + target.decode("latin-1"), encoded=True)
        try:
            response = await self.session.request(
                method,
                url,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=body,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(str(exc)) from exc
        except TimeoutError as exc:
            raise UpstreamTimeoutError("read", str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(str(exc)) from exc
        return _AiohttpResponse(response, aiohttp)

    async def aclose(self) -> None:
        await self.session.close()


class _AiohttpResponse(UpstreamResponse):
    def __init__(self, response: Any, aiohttp: Any) -> None:
        self._response = response
        self._aiohttp = aiohttp
        self.status = response.status
        self.headers = [(k.lower(), v) for k, v in response.raw_headers]

    @property
    def at_eof(self) -> bool:
        return bool(self._response.content.at_eof())

    def take(self) -> bytes:
        content = self._response.content
        return content.read_nowait() if content.is_eof() or content._buffer else b""

    async def read(self) -> bytes:
        try:
            return await self._response.content.readany()
        except TimeoutError as exc:
            raise UpstreamTimeoutError("read", str(exc)) from exc
        except self._aiohttp.ClientError as exc:
            raise UpstreamProtocolError(str(exc)) from exc

    def abort(self) -> None:
        self._response.close()

    async def aclose(self) -> None:
        self._response.release()


def make_client(name: str) -> ProxyClient | None:
    """The candidate called ``name`` (None: nocosup's default, the lean client)."""
    if name == "lean":
        return None
    if name == "aiohttp":
        return AiohttpClient()
    if name == "httpx":
        return HttpxClient()
    if name == "httpx-aiohttp":
        import httpx
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(
            trust_env=False,
            limits=httpx.Limits(max_connections=LIMIT, max_keepalive_connections=LIMIT),
        )
        return HttpxClient(transport)
    raise SystemExit(f"unknown client {name!r}")


def proxy_app() -> Any:
    """``uvicorn proxy_clients:proxy_app --factory --app-dir bench``; ``PROXY_CLIENT`` picks
    the candidate, ``PROXY_UPSTREAM`` the upstream. Forwards every request like the
    supervisor's gateway does (``root_path`` set to the app prefix)."""
    name = os.environ.get("PROXY_CLIENT", "lean")
    upstream = os.environ["PROXY_UPSTREAM"]
    # Process-wide malloc setting the lean client applies: give it to every candidate so
    # only the client differs (without it every 1 MB figure is dominated by page faults).
    keep_large_buffers_on_heap()
    holder: dict[str, Proxy] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    holder["proxy"] = Proxy(make_client(name))
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await holder["proxy"].aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        scope = dict(scope)
        scope["root_path"] = PREFIX
        await holder["proxy"].forward(upstream, scope, receive, send)

    return app


# ------------------------------------------------------------------------- the runner

CANDIDATES = ("lean", "aiohttp", "httpx-aiohttp", "httpx")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--warmup", type=float, default=2, help="warm-up seconds per target")
    p.add_argument("--clients", default=",".join(CANDIDATES), help="comma-separated candidates")
    p.add_argument("--sizes", default="1KB,1MB", help="comma-separated: 1KB,1MB")
    p.add_argument("--no-pin", action="store_true", help="do not pin wrk and servers to CPUs")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    return p.parse_args()


def start_upstream(ws: Workspace, cpus: str | None) -> ServerProcess:
    """The upstream every proxy benchmark forwards to (``upstream_app``, as ``direct``),
    started."""
    return ws.start(
        uvicorn_server(
            ws.dir,
            "proxy_clients:upstream_app",
            label="direct",
            cpus=cpus,
            ready_path=SIZES["1KB"],
            extra_args=["--app-dir", str(BENCH_DIR)],
        )
    )


def start_servers(ws: Workspace, names: list[str], cpus: str | None) -> dict[str, ServerProcess]:
    """The upstream (as ``direct``) and one proxy process per candidate, all started."""
    app_dir = ["--app-dir", str(BENCH_DIR)]
    upstream = start_upstream(ws, cpus)
    servers = {"direct": upstream}
    for name in names:
        servers[name] = ws.start(
            uvicorn_server(
                ws.dir,
                "proxy_clients:proxy_app",
                label=name,
                factory=True,
                cpus=cpus,
                env={"PROXY_CLIENT": name, "PROXY_UPSTREAM": upstream.url},
                ready_path=SIZES["1KB"],
                extra_args=app_dir,
            )
        )
    return servers


def measure(
    servers: dict[str, ServerProcess], sizes: list[str], args: argparse.Namespace
) -> dict[tuple[str, str], list[LoadResult]]:
    """wrk against every server for every size, rounds rotating the order."""
    labels = list(servers)
    for size in sizes:
        for label in labels:
            run_wrk(servers[label].url + SIZES[size], connections=args.connections, duration=2)
    results: dict[tuple[str, str], list[LoadResult]] = {}
    for size in sizes:
        for r, order in rotations(labels, args.rounds):
            for label in order:
                server = servers[label]
                res = run_wrk(
                    server.url + SIZES[size],
                    connections=args.connections,
                    duration=args.duration,
                    server=server,
                )
                results.setdefault((size, label), []).append(res)
                print(
                    f"  {size} round {r + 1} {label:13} {fmt(res.rps, 0):>8} req/s "
                    f"p50 {res.p50_ms:7.2f} ms p99 {res.p99_ms:7.2f} ms "
                    f"cpu {fmt(res.server_cpu_us, 0):>6} µs/req"
                    + (f" ERRORS {res.errors}" if res.failed else ""),
                    flush=True,
                )
    return results


def report(
    results: dict[tuple[str, str], list[LoadResult]], labels: list[str], sizes: list[str]
) -> None:
    """One table: per size and server, medians and the ratio to direct."""
    rows = []
    for size in sizes:
        direct = results[(size, "direct")]
        direct_rps = median(x.rps for x in direct)
        for label in labels:
            runs = results[(size, label)]
            per_round = [ratio(a.rps, b.rps) for a, b in zip(runs, direct, strict=True)]
            rows.append(
                [
                    size,
                    label,
                    fmt(median(x.rps for x in runs), 0),
                    " / ".join(fmt(x.rps, 0) for x in runs),
                    f"{ratio(median(x.rps for x in runs), direct_rps):.3f}x",
                    f"{median(per_round):.3f}x",
                    fmt(median(x.p50_ms for x in runs), 2),
                    fmt(median(x.p99_ms for x in runs), 2),
                    fmt(median(x.server_cpu_us for x in runs), 0),
                    sum(x.failed for x in runs),
                ]
            )
    print()
    print("## Candidates (medians over rounds; CPU is the measured server's process)")
    print(
        table(
            [
                "size",
                "server",
                "req/s",
                "per round",
                "x direct",
                "median round ratio",
                "p50 ms",
                "p99 ms",
                "CPU µs/req",
                "err",
            ],
            rows,
        )
    )


def main() -> int:
    args = parse_args()
    require_wrk()
    require_fast_uvicorn()
    names = [n for n in args.clients.split(",") if n]
    missing = [
        n
        for n, mod in (("aiohttp", "aiohttp"), ("httpx-aiohttp", "httpx_aiohttp"))
        if n in names and importlib.util.find_spec(mod) is None
    ]
    if missing:
        print(f"bench: skipping {missing}: `pip install aiohttp httpx-aiohttp`", file=sys.stderr)
        names = [n for n in names if n not in missing]
    sizes = [s for s in args.sizes.split(",") if s]
    cpus = start_run(
        "proxy clients side by side",
        args.no_pin,
        "wrk on CPU 0, upstream and proxies on CPU 1",
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds",
    )
    with Workspace("proxy-clients", keep=args.keep) as ws:
        servers = start_servers(ws, names, cpus)
        check_fast_loop(*servers.values())
        results = measure(servers, sizes, args)
        report(results, list(servers), sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
