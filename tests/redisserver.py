"""A private redis-server for tests that must restart Redis (the shared one stays up)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from tests.servers import free_port


class RedisServer:
    """``extra``: more redis-server arguments (an ACL user: then the first ``--user`` with
    a ``>password`` pings); ``tls``: (certificate, key) of a TLS-only server, the
    certificate also being the CA (``url`` is then ``rediss://``)."""

    def __init__(
        self, workdir: Path, extra: list[str] | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra = list(extra or [])
        self.tls = tls
        scheme = "rediss" if tls else "redis"
        self.url = f"{scheme}://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.tls is not None:
            cert, key = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port)]
            listen += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            listen += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, **self._client_options())
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()  # no redis-server left behind
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[0]))
        if "--user" in self.extra:
            user = self.extra.index("--user", self.extra.index("--user") + 1)
            words = self.extra[user + 1 :]
            password = next((w[1:] for w in words if w.startswith(">")), None)
            options.update(username=words[0], password=password)
        return options

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start on the same port: everything in it is gone."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
