"""Real ``nocosup serve`` processes for tests: start, wait until they answer, stop, restart."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-0123456789abcdefghijkl"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


#: Test servers listen below the kernel's ephemeral range (32768-60999 on Linux), where
#: ``bind(0)`` and outgoing connections take their ports: ``bind(0)`` may hand the same
#: port to two pytest-xdist workers (or twice to one) before a server has bound it. Each
#: worker takes ports in turn from a slice of its own, from a random start (another run
#: beside this one starts elsewhere), and only ports nothing is bound to.
PORT_BASE = 20_000
PORT_SLICE = 1_500


def _worker_index() -> int:
    """0 for gw0 (or no xdist), 1 for gw1, ... (slices wrap after eight workers)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) % 8 if worker[2:].isdigit() else 0


_slice_start = PORT_BASE + _worker_index() * PORT_SLICE
_next_port = itertools.count(random.randrange(PORT_SLICE))


def free_port() -> int:
    """A port of 127.0.0.1 that nothing is bound to, never handed out twice in a row."""
    for _ in range(PORT_SLICE):
        port = _slice_start + next(_next_port) % PORT_SLICE
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_slice_start}-{_slice_start + PORT_SLICE - 1}")


class NocosupServer:
    """One host process. ``url`` is its base URL; ``log`` the file it writes to."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        log: Path,
        replicas: int = 1,
        args: tuple[str, ...] = (),
        command: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.args = args
        #: Python arguments that replace ``-m nocosup serve ...`` (an app of the user's
        #: own under uvicorn, say); ready when ``/readyz`` answers 200 all the same.
        self.command = command
        self.port = port
        self.log = log
        self.replicas = replicas
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def storage(self) -> Path:
        return Path(self.env["NOCOSUP_STORAGE_DIR"])

    def start(self, timeout: float = 30) -> NocosupServer:
        # replicas > 1: several processes on one socket, replicas of one environment
        argv = list(self.command) or [
            "-m",
            "nocosup",
            "serve",
            "--port",
            str(self.port),
            "--log-level",
            "info",
            "--workers",
            str(self.replicas),
            *self.args,
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready in {timeout}s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Stop the process (SIGTERM: clean shutdown; SIGKILL: a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.signal(sig)
        return self.reap(timeout)

    def reap(self, timeout: float = 20) -> int | None:
        """Wait for the signalled process to exit (SIGKILL after ``timeout``)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait(5)
        finally:
            self.signal(signal.SIGKILL)  # replicas a dead parent left behind

    def signal(self, sig: int) -> None:
        """Signal the whole process group (uvicorn's replicas included)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def restart(self) -> NocosupServer:
        self.stop()
        return self.start()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        # generous: a DROP DATABASE forces a PostgreSQL checkpoint, which took over 30 s
        # while parallel test sessions filled the shared server with dirty pages
        return httpx.AsyncClient(base_url=self.url, timeout=90, **kwargs)

    def admin(self) -> httpx.AsyncClient:
        return self.client(headers=AUTH)


class ServerFactory:
    """Builds servers with isolated storage; stops all of them at the end of a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[NocosupServer] = []

    def env(self, storage: Path | None = None, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("APP_", "DB_", "ENVIRONMENT_", "NOCOSUP_"))
        }
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "NOCOSUP_ADMIN_TOKEN": ADMIN_TOKEN,
                "NOCOSUP_APP_FACTORY": "tests.factories:build",
                "NOCOSUP_STORAGE_DIR": str(
                    storage or self.tmp_path / f"storage{len(self.servers)}"
                ),
                "NOCOSUP_LOAD_PLUGINS": "",
            }
        )
        env.update(extra)
        return env

    def start(
        self,
        storage: Path | None = None,
        port: int | None = None,
        replicas: int = 1,
        **extra: str,
    ) -> NocosupServer:
        """A started server; ``extra`` goes to its environment."""
        return self.start_with_args((), storage, port, replicas, **extra)

    def start_with_args(
        self,
        args: tuple[str, ...],
        storage: Path | None = None,
        port: int | None = None,
        replicas: int = 1,
        **extra: str,
    ) -> NocosupServer:
        """A started server whose ``nocosup serve`` also gets ``args`` (``--http h11``)."""
        port = port or free_port()
        log = self.tmp_path / f"server-{port}.log"
        server = NocosupServer(self.env(storage, **extra), port, log, replicas, args)
        self.servers.append(server)
        return server.start()

    def start_command(self, command: tuple[str, ...], port: int, **extra: str) -> NocosupServer:
        """A started process of ``python *command`` (listening on ``port``) with the
        environment of a server; it is stopped with the others."""
        log = self.tmp_path / f"server-{port}.log"
        server = NocosupServer(self.env(None, **extra), port, log, command=command)
        self.servers.append(server)
        return server.start()

    def __enter__(self) -> ServerFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``with private_redis, servers:`` stops the servers before the Redis they use
        goes away (a server whose Redis is gone spends seconds retrying on shutdown)."""
        self.stop_all()

    def stop_all(self) -> None:
        """SIGTERM every running server at once, then wait for each: the clean shutdowns
        overlap (a test's teardown costs the slowest, not their sum)."""
        running = [s for s in self.servers if s.proc is not None and s.proc.poll() is None]
        for server in running:
            server.signal(signal.SIGTERM)
        for server in running:
            server.reap()
