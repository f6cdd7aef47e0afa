"""A private Redis Sentinel deployment for tests: a master, a replica and one sentinel,
each a real ``redis-server`` process (the sentinel runs ``redis-server --sentinel``), on
free ports of 127.0.0.1, with short failure detection so a failover takes seconds."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from tests.servers import free_port

SERVICE = "nocosup-test"
#: How long the sentinel waits before it calls the master down, and the failover's cap.
DOWN_AFTER_MS = 800
FAILOVER_TIMEOUT_MS = 4000


class SentinelSet:
    """Master, replica and sentinel; :meth:`kill_master` starts a real failover."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: The master :meth:`freeze_master` stopped (thawed by :meth:`stop`).
        self.frozen: str | None = None

    @property
    def url(self) -> str:
        """The nocosup URL of this deployment's master, through the sentinel."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def _redis(self, name: str, *extra: str) -> None:
        data = self.workdir / f"redis-{name}"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port",
            str(self.ports[name]),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data),
            *extra,
        ]
        self.procs[name] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def start(self) -> None:
        self._redis("a")
        _wait_ping(self.ports["a"])
        self._redis("b", "--replicaof", "127.0.0.1", str(self.ports["a"]))
        _wait_ping(self.ports["b"])
        self.wait_replicated("a")
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.workdir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['a']} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        self.procs["sentinel"] = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ping(self.sentinel_port)
        deadline = time.monotonic() + 20
        while self.master_port() != self.ports["a"] or not self._sees_replica():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel never saw the master and its replica")
            time.sleep(0.1)

    def _sees_replica(self) -> bool:
        with redis.Redis(port=self.sentinel_port, decode_responses=True) as client:
            replicas = client.execute_command("SENTINEL", "REPLICAS", SERVICE)
        return bool(replicas)

    def master_port(self) -> int | None:
        """The master's port as the sentinel tells it now."""
        with redis.Redis(port=self.sentinel_port, decode_responses=True) as client:
            addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(addr[1]) if addr else None

    def master_name(self) -> str:
        port = self.master_port()
        return next(n for n, p in self.ports.items() if p == port)

    def wait_replicated(self, master: str, timeout: float = 20) -> None:
        """Until the replica's link to ``master`` is up and it has caught up."""
        replica = "b" if master == "a" else "a"
        deadline = time.monotonic() + timeout
        with redis.Redis(port=self.ports[replica], decode_responses=True) as client:
            while client.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica never synced with its master")
                time.sleep(0.05)
        with redis.Redis(port=self.ports[master]) as client:
            client.wait(1, int(timeout * 1000))

    def kill_master(self) -> str:
        """SIGKILL the master (no goodbye to anyone); returns its name."""
        name = self.master_name()
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)
        return name

    def freeze_master(self) -> str:
        """SIGSTOP the master: its sockets stay open and silent, as with a paused VM or a
        network partition, so only a client with a deadline notices; returns its name."""
        name = self.master_name()
        self.procs[name].send_signal(signal.SIGSTOP)
        self.frozen = name
        return name

    def wait_failover(self, old: str, timeout: float = 30) -> str:
        """Until the sentinel names another master; returns its name."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                port = self.master_port()
            except redis.ConnectionError:
                port = None
            if port is not None and port != self.ports[old]:
                return self.master_name()
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinel did not fail over")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.frozen is not None and self.procs[self.frozen].poll() is None:
            self.procs[self.frozen].kill()  # a stopped process would hold SIGTERM
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __enter__(self) -> SentinelSet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _wait_ping(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis(port=port) as client:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
