"""Shared helpers for the bench/ scripts: server processes, wrk load, small statistics.

Kept generic on purpose (any uvicorn app, any ``nocosup serve`` configuration, any URL) so
every benchmark measures the same way: servers are real processes started by PID and
stopped by PID, load comes from ``wrk`` with a Lua ``done`` hook that prints exact
percentiles as JSON, and server CPU is read from ``/proc/<pid>/stat`` around each run.

Pinning convention (see README): the driver script pins itself, and so ``wrk`` and any
Python client it starts, to CPU 0 (:func:`pin_self`); servers are started under
``taskset -c 1`` (``cpus="1"``). All servers of one run share CPU 1, which is fair when only
one of them is under load at a time, as the scripts arrange.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: uvicorn flags every benchmarked server uses (``nocosup serve`` gets the same through
#: uvicorn's ``auto`` choices, which pick uvloop and httptools when installed; checked by
#: :func:`require_fast_uvicorn`). Access log off, warnings only.
UVICORN_FLAGS = ("--loop", "uvloop", "--http", "httptools", "--no-access-log")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

_WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""

#: Appended for a load whose requests must all differ, by how (:attr:`Load.vary`): a
#: query string counter, or a header whose value counts (``-H`` headers kept).
_WRK_VARY_LUA = {
    "": "",
    "target": r"""
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, wrk.path .. "?n=" .. n)
end
""",
    "header": r"""
local n = 0
request = function()
  n = n + 1
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-N"] = tostring(n)
  return wrk.format(nil, nil, headers)
end
""",
}


# --- tools and pinning ----------------------------------------------------------------


def require_tool(name: str, hint: str) -> str:
    """Path of executable ``name``, or exit 2 with a message saying how to install it."""
    path = shutil.which(name)
    if path is None:
        print(f"bench: '{name}' is not installed; {hint}", file=sys.stderr)
        sys.exit(2)
    return path


def require_wrk() -> str:
    return require_tool("wrk", "install it with `apt-get install -y wrk` (Debian)")


def require_fast_uvicorn() -> None:
    """uvloop and httptools must be importable, else servers would not run as documented."""
    missing = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"bench: missing {', '.join(missing)}; install with `pip install uvicorn[standard]`",
            file=sys.stderr,
        )
        sys.exit(2)


def check_fast_loop(*servers: ServerProcess) -> None:
    """Fail unless every server mapped uvloop and httptools (``auto`` may silently differ)."""
    for server in servers:
        for lib in ("uvloop", "httptools"):
            if not server.has_loaded(f"/{lib}/"):
                raise RuntimeError(f"{server.label} (pid {server.pid}) did not load {lib}")


def pin_self(cpu: int | None) -> None:
    """Pin this process (and the wrk/clients it starts later) to ``cpu``; None: no pin."""
    if cpu is not None:
        if cpu >= (os.cpu_count() or 1):
            print(f"bench: cannot pin to CPU {cpu}: only {os.cpu_count()} CPUs", file=sys.stderr)
            sys.exit(2)
        os.sched_setaffinity(0, {cpu})


def start_run(title: str, no_pin: bool, placement: str, load: str | None = None) -> str | None:
    """Pin this process to CPU 0 (unless ``no_pin``), print the run's header lines, and
    return the CPU list for servers (``"1"``, or None when unpinned)."""
    pin_self(None if no_pin else 0)
    print(f"# {title} ({machine_line()})")
    print("# " + (f"{load}, " if load else "") + ("unpinned" if no_pin else placement))
    return None if no_pin else "1"


def _taskset(cpus: str | None) -> list[str]:
    if cpus is None:
        return []
    return [require_tool("taskset", "it ships in util-linux"), "-c", cpus]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- server processes -------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus nocosup's variables, plus PYTHONPATH and ``extra``.

    Dropping inherited APP_*/DB_*/NOCOSUP_* variables keeps a developer's shell settings
    from changing what is measured.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APP_", "DB_", "ENVIRONMENT_", "NOCOSUP_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """One server started by PID; stop() signals that PID only."""

    label: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    ready_path: str = "/"
    proc: subprocess.Popen[bytes] | None = None
    #: Start in a session (process group) of its own, so signal_group() reaches every
    #: process it spawned (uvicorn replicas); the default leaves it in ours.
    new_session: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = 60) -> ServerProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} not ready in {timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the PID and wait; SIGKILL it if it does not exit in ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the process group (``new_session=True``), else to the PID only."""
        assert self.proc is not None, "server not started"
        with contextlib.suppress(ProcessLookupError):
            if self.new_session:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def rss_kib(self) -> int:
        """Resident set size now (VmRSS, KiB)."""
        return self._status("VmRSS")

    def threads(self) -> int:
        return self._status("Threads")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (all threads, live and exited)."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def has_loaded(self, fragment: str) -> bool:
        """Whether a mapped file of the process has ``fragment`` in its path (e.g. 'uvloop')."""
        return fragment in Path(f"/proc/{self.pid}/maps").read_text()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def nocosup_server(
    workdir: Path,
    *,
    label: str = "nocosup",
    token: str | None = None,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "warning",
) -> ServerProcess:
    """A ``nocosup serve`` process (not started) on embedded defaults in ``workdir``.

    Storage (SQLite registry and tenant files) goes to ``workdir/<label>-storage``; the
    admin token is ``token`` (random if None) and is kept in ``server.env``.
    Entry-point plugins are off (NOCOSUP_LOAD_PLUGINS="") so only built-ins are measured.
    """
    port = free_port()
    storage = workdir / f"{label}-storage"
    full_env = clean_env(
        NOCOSUP_STORAGE_DIR=str(storage),
        NOCOSUP_ADMIN_TOKEN=token or secrets.token_urlsafe(24),
        NOCOSUP_LOAD_PLUGINS="",
    )
    full_env.update(env or {})
    argv = [
        *_taskset(cpus),
        PYTHON,
        "-m",
        "nocosup",
        "serve",
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    return ServerProcess(label, argv, full_env, port, workdir / f"{label}.log", "/readyz")


def uvicorn_server(
    workdir: Path,
    app: str,
    *,
    label: str = "uvicorn",
    factory: bool = False,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
    ready_path: str = "/",
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """A plain ``uvicorn module:app`` process (not started) with :data:`UVICORN_FLAGS`."""
    port = free_port()
    argv = [
        *_taskset(cpus),
        PYTHON,
        "-m",
        "uvicorn",
        app,
        *(["--factory"] if factory else []),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *UVICORN_FLAGS,
        "--log-level",
        "warning",
        *extra_args,
    ]
    full_env = clean_env(**(env or {}))
    return ServerProcess(label, argv, full_env, port, workdir / f"{label}.log", ready_path)


class Workspace(contextlib.ExitStack):
    """A temp directory plus the servers started in it; all stopped and removed on exit."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix=f"nocosup-{prefix}-"))
        self.keep = keep
        self.servers: list[ServerProcess] = []
        self.callback(self._cleanup)

    def start(self, server: ServerProcess, timeout: float = 60) -> ServerProcess:
        self.servers.append(server)
        return server.start(timeout)

    def _cleanup(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        if self.keep:
            print(f"bench: kept logs and storage in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- multi-environment deployments (Redis) ---------------------------------------------

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def require_redis(url: str) -> None:
    """Exit 2 with a message unless the Redis at ``url`` answers PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        print(f"bench: Redis at {url} does not answer ({exc}); pass --redis-url", file=sys.stderr)
        sys.exit(2)
    finally:
        client.close()


def redis_prefix(name: str) -> str:
    """A NOCOSUP_REDIS_PREFIX no other run shares; remove its keys with :func:`purge_redis`."""
    return f"nocosup-bench-{name}-{secrets.token_hex(4)}"


def purge_redis(url: str, prefix: str) -> int:
    """UNLINK every ``{prefix}:*`` key (SCAN, never FLUSH*); returns how many went."""
    import redis

    client = redis.Redis.from_url(url)
    removed = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += client.unlink(*batch)
                batch.clear()
        if batch:
            removed += client.unlink(*batch)
    finally:
        client.close()
    return removed


DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def pg_registry(name: str, dsn: str = DEFAULT_PG_DSN) -> Iterator[dict[str, str]]:
    """DB_* variables of a PostgreSQL registry no other run shares (the supervisor creates
    the database on start); on exit it is dropped with every tenant database named after
    it. For what needs one shared registry: supervisor replicas."""
    from urllib.parse import urlsplit

    import asyncpg

    database = f"nb_{name[:8]}_{secrets.token_hex(4)}"  # short: tenant names grow from it
    url = urlsplit(dsn)

    async def drop() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{database}%"
            )
            for row in rows:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await conn.close()

    env = {
        "DB_DIALECT": "postgres",
        "DB_HOST": url.hostname or "127.0.0.1",
        "DB_PORT": str(url.port or 5432),
        "DB_USER": url.username or "postgres",
        "DB_DATABASE": database,
    }
    if url.password:
        env["DB_PASSWORD"] = url.password
    try:
        yield env
    finally:
        asyncio.run(drop())


def cluster_env(redis_url: str, prefix: str, interval: float | None = None) -> dict[str, str]:
    """Variables a supervisor and its workers share (one Redis for cache and commands);
    ``interval``: NOCOSUP_HEARTBEAT_INTERVAL in seconds, None for nocosup's default."""
    env = {
        "APP_DISCOVERY_ADAPTER": "remote",
        "APP_COMMAND_ADAPTER": "redis",
        "APP_SUPERVISOR_REDIS_URL": redis_url,
        "APP_COMMAND_REDIS_URL": redis_url,
        "NOCOSUP_REDIS_PREFIX": prefix,
    }
    if interval is not None:
        env["NOCOSUP_HEARTBEAT_INTERVAL"] = f"{interval:g}"
    return env


def supervisor_server(
    workdir: Path,
    redis_url: str,
    prefix: str,
    *,
    label: str = "supervisor",
    interval: float | None = None,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "warning",
) -> ServerProcess:
    """A ``nocosup serve`` supervisor (not started) whose apps run on Redis workers."""
    full = {
        **cluster_env(redis_url, prefix, interval),
        "APP_MODE": "supervisor",
        "APP_PROCESS_ADAPTER": "remote",
        **(env or {}),
    }
    return nocosup_server(workdir, label=label, cpus=cpus, env=full, log_level=log_level)


def worker_server(
    workdir: Path,
    redis_url: str,
    prefix: str,
    environment: str,
    *,
    label: str | None = None,
    interval: float | None = None,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
    new_session: bool = False,
    log_level: str = "warning",
) -> ServerProcess:
    """A ``nocosup serve`` worker (not started) of ``environment``, reachable on its port."""
    full = {
        **cluster_env(redis_url, prefix, interval),
        "APP_MODE": "worker",
        "APP_PROCESS_ADAPTER": "local",
        "ENVIRONMENT_NAME": environment,
        **(env or {}),
    }
    server = nocosup_server(
        workdir, label=label or f"worker-{environment}", cpus=cpus, env=full, log_level=log_level
    )
    server.env.setdefault("ENVIRONMENT_URL", server.url)
    server.new_session = new_session
    return server


# --- admin API client -------------------------------------------------------------------


class Admin:
    """Synchronous client of a nocosup admin API (Bearer token), timing each call."""

    def __init__(self, server: ServerProcess) -> None:
        token = server.env["NOCOSUP_ADMIN_TOKEN"]
        self.http = httpx.Client(
            base_url=server.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def call(
        self, method: str, path: str, body: Any = None, ok: Iterable[int] = (200, 201)
    ) -> tuple[float, httpx.Response]:
        """(seconds, response) for one request; raises with the body on an unexpected status."""
        began = time.perf_counter()
        response = self.http.request(method, path, json=body)
        elapsed = time.perf_counter() - began
        if response.status_code not in tuple(ok):
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return elapsed, response

    def create_app(self, name: str, **fields: Any) -> float:
        return self.call("POST", "/api/apps", {"name": name, **fields})[0]

    def start_app(self, name: str) -> float:
        return self.call("POST", f"/api/apps/{name}/start")[0]

    def environments(self) -> dict[str, dict[str, Any]]:
        """``GET /api/environments`` by name."""
        _, response = self.call("GET", "/api/environments")
        return {e["name"]: e for e in response.json()["environments"]}

    def wait_environments(
        self, instances: dict[str, int], timeout: float = 30
    ) -> dict[str, dict[str, Any]]:
        """Poll until each named environment lists that many live instances (0: offline)."""
        deadline = time.monotonic() + timeout
        while True:
            envs = self.environments()
            if all(len(envs.get(n, {}).get("instances", [])) == k for n, k in instances.items()):
                return envs
            if time.monotonic() > deadline:
                raise RuntimeError(f"environments never reached {instances}: {envs}")
            time.sleep(0.05)


# --- load generation --------------------------------------------------------------------


@dataclass
class LoadResult:
    """One wrk run against one URL (latencies in ms, server CPU in µs per request)."""

    url: str
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_us: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


@dataclass
class Load:
    """One URL to load, and the server whose CPU is charged for it (optional)."""

    url: str
    server: ServerProcess | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Every request distinct (nothing a proxy can remember from one request to the
    #: next): ``"target"`` adds ``?n=1``, ``?n=2``, ... to the path, ``"header"`` sends
    #: ``X-N: 1``, ``X-N: 2``, ... (a browser's heads change so); ``""``: all alike.
    vary: str = ""


def run_wrk(
    url: str,
    *,
    connections: int = 32,
    duration: float = 5.0,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    server: ServerProcess | None = None,
    timeout_s: float = 10.0,
    vary: str = "",
) -> LoadResult:
    """Run wrk for ``duration`` seconds; CPU per request is measured on ``server`` if given
    (``vary``: see :class:`Load`)."""
    load = Load(url, server, headers or {}, vary)
    return run_wrk_concurrent(
        [load], connections=connections, duration=duration, threads=threads, timeout_s=timeout_s
    )[0]


def run_wrk_concurrent(
    loads: Sequence[Load],
    *,
    connections: int = 32,
    duration: float = 5.0,
    threads: int = 1,
    timeout_s: float = 10.0,
) -> list[LoadResult]:
    """Run one wrk per load, all at the same time, and return their results in order.

    With the servers pinned to one shared core, each saturated server gets an equal share
    of it from the kernel scheduler, so the ratio of their req/s is the inverse ratio of
    their CPU cost per request; any noise (other processes, steal, frequency) hits both in
    the same instant. That makes this ratio far steadier than alternating runs.
    """
    wrk = require_wrk()
    scripts: dict[str, str] = {}
    for vary in {load.vary for load in loads}:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(_WRK_LUA + _WRK_VARY_LUA[vary])
            scripts[vary] = fh.name
    procs: list[subprocess.Popen[str]] = []
    try:
        cpu0 = [load.server.cpu_seconds() if load.server else 0.0 for load in loads]
        for load in loads:
            argv = [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                f"{timeout_s:g}s",
                "-s",
                scripts[load.vary],
            ]
            for key, value in load.headers.items():
                argv += ["-H", f"{key}: {value}"]
            argv.append(load.url)
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        outputs = [p.communicate(timeout=duration + 60) for p in procs]
        cpu1 = [load.server.cpu_seconds() if load.server else 0.0 for load in loads]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for script in scripts.values():
            os.unlink(script)
    return [
        _wrk_result(load, proc.returncode, out, err, c1 - c0)
        for load, proc, (out, err), c0, c1 in zip(loads, procs, outputs, cpu0, cpu1, strict=True)
    ]


def _wrk_result(load: Load, code: int | None, out: str, err: str, cpu: float) -> LoadResult:
    line = next((s for s in out.splitlines() if s.startswith("BENCHJSON ")), None)
    if code != 0 or line is None:
        raise RuntimeError(f"wrk on {load.url} failed ({code}): {err or out}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    errors = {k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]}
    result = LoadResult(
        url=load.url,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
        errors=errors,
    )
    if load.server is not None and result.requests:
        result.server_cpu_us = cpu / result.requests * 1e6
    return result


def rotations(items: Sequence[Any], rounds: int) -> Iterator[tuple[int, list[Any]]]:
    """(round, items in this round's order): the starting item rotates each round so no
    target always runs first (after the same neighbour, on a warmer or colder machine)."""
    for r in range(rounds):
        k = r % len(items)
        yield r, [*items[k:], *items[:k]]


# --- statistics and output --------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Iterable[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def stalled(runs: Sequence[LoadResult], factor: float = 0.25) -> set[int]:
    """Indexes of runs below ``factor`` x the median req/s: the shared machine froze (it
    happens here for seconds at a time); medians absorb them, ranges should leave them out."""
    mid = median(x.rps for x in runs)
    return {i for i, x in enumerate(runs) if x.rps < factor * mid}


def paired_ratios(a: Sequence[LoadResult], b: Sequence[LoadResult]) -> tuple[list[float], int]:
    """req/s of a[i] / b[i] per round, leaving out rounds where either side stalled;
    returns (ratios, rounds left out)."""
    bad = stalled(a) | stalled(b)
    pairs = zip(a, b, strict=True)
    ratios = [ratio(x.rps, y.rps) for i, (x, y) in enumerate(pairs) if i not in bad]
    return ratios, len(bad)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(value: float | int | None, digits: int = 1) -> str:
    """A number for a table: thousands separated, ``-`` for missing."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (right-aligned numbers) ready to paste into an issue."""
    text_rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in text_rows)]) for i, h in enumerate(headers)]
    numeric = [all(_numeric(r[i]) for r in text_rows) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + (":" if n else "-") for w, n in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    body = [
        "| "
        + " | ".join(
            c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True)
        )
        + " |"
        for r in text_rows
    ]
    return "\n".join([line, rule, *body])


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.lstrip("-+")[:1].isdigit()


def machine_line() -> str:
    """One line describing where the figures come from (CPU count, Python, load average)."""
    load = os.getloadavg()
    return (
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
