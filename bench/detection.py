"""How fast the supervisor sees a worker environment go: seconds from the signal to
``GET /api/environments`` showing it ``offline``.

For each heartbeat interval (``--intervals``, default nocosup's 10 s and 1 s) a supervisor
runs with that NOCOSUP_HEARTBEAT_INTERVAL, on its own Redis prefix (keys removed at the
end) and SQLite storage in a temp dir, and its admin API is polled every ``--poll`` seconds
(50 ms) from this process:

* crash: workers (one environment each, every one in a process group of its own) are
  killed with SIGKILL of their group. Nothing tells the supervisor: the instance's
  heartbeat key must expire. It lives 3 intervals (the TTL) and is renewed every interval,
  so the wait after a kill is between 2 and 3 intervals, depending on how long before the
  kill the last beat was. Each sample is killed at a different phase of its beat cycle
  (spread evenly over one interval) and the key's PTTL is read just before the kill: the
  table shows that expected wait next to the measured one, and the lag between them is
  the supervisor's own share (polling included). The crash samples of one interval run at
  the same time, so 3 samples of the 10 s case take about 35 s, not 100.
* clean shutdown: one worker at a time gets SIGTERM (to its group); nocosup deletes the
  heartbeat key while shutting down, so the bound is the worker's shutdown time, not the
  TTL. The time until the process exited is shown too.

Rounds: ``--rounds`` (5) for intervals under 5 s, ``--long-rounds`` (3) for the others.
Pinning: this script on CPU 0, every server on CPU 1 (``--no-pin``: the scheduler decides).

    python bench/detection.py [--intervals 10,1] [--rounds 5] [--long-rounds 3] [--no-pin]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from common import (
    DEFAULT_REDIS_URL,
    Admin,
    ServerProcess,
    Workspace,
    fmt,
    median,
    purge_redis,
    redis_prefix,
    require_redis,
    start_run,
    supervisor_server,
    table,
    worker_server,
)

from nocosup.rediskeys import Keys

#: The heartbeat key lives this many intervals (nocosup.heartbeat.heartbeat_ttl).
TTL_INTERVALS = 3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--intervals", default="10,1", help="heartbeat intervals in seconds (default 10,1)"
    )
    p.add_argument("--rounds", type=int, default=5, help="samples per case, intervals < 5 s (5)")
    p.add_argument(
        "--long-rounds", type=int, default=3, help="samples per case, intervals >= 5 s (3)"
    )
    p.add_argument("--cases", default="crash,shutdown", help="crash,shutdown (default both)")
    p.add_argument("--poll", type=float, default=0.05, help="API poll period, s (0.05)")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help=f"({DEFAULT_REDIS_URL})")
    p.add_argument("--no-pin", action="store_true", help="do not pin this script and servers")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, storage)")
    return p.parse_args()


@dataclass
class Sample:
    """One worker taken down: when it was signalled, when the API showed it offline."""

    interval: float
    case: str
    environment: str
    detected: float | None = None
    #: crash: PTTL of the heartbeat key just before the kill (the wait nocosup promises)
    expected: float | None = None
    #: shutdown: seconds until the process exited
    exited: float | None = None

    @property
    def lag(self) -> float | None:
        if self.detected is None or self.expected is None:
            return None
        return self.detected - self.expected


class Poller:
    """``GET /api/environments`` on a fixed cadence, the signals sent between two polls."""

    def __init__(self, admin: Admin, period: float) -> None:
        self.admin = admin
        self.period = period

    def until_offline(
        self,
        pending: dict[str, float],
        timeout: float,
        due: dict[str, float] | None = None,
        fire: dict[str, Callable[[], float]] | None = None,
    ) -> dict[str, float]:
        """Poll until every environment in ``pending`` (name -> signal time) is offline;
        environments in ``due`` (name -> monotonic time) are first signalled by
        ``fire[name]()`` at their time. Returns name -> seconds from signal to seen."""
        due = dict(due or {})
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        tick = time.monotonic()
        while (pending or due) and time.monotonic() < deadline:
            for name, at in sorted(due.items(), key=lambda kv: kv[1]):
                if at <= time.monotonic():
                    pending[name] = (fire or {})[name]()
                    del due[name]
            if pending:
                envs = self.admin.environments()
                now = time.monotonic()
                for name in list(pending):
                    if envs.get(name, {}).get("status") == "offline":
                        seen[name] = now - pending.pop(name)
            tick += self.period
            time.sleep(max(0.0, tick - time.monotonic()))
        return seen


def crash_samples(
    ws: Workspace,
    admin: Admin,
    client: redis.Redis,
    args: argparse.Namespace,
    prefix: str,
    interval: float,
    n: int,
) -> list[Sample]:
    """``n`` workers at once, each SIGKILLed at its own phase of the beat cycle."""
    cpus = None if args.no_pin else "1"
    keys = Keys(prefix)
    workers: dict[str, ServerProcess] = {}
    for k in range(n):
        name = f"crash{k + 1}"
        workers[name] = ws.start(
            worker_server(
                ws.dir,
                args.redis_url,
                prefix,
                name,
                label=f"w{interval:g}s-{name}",
                interval=interval,
                cpus=cpus,
                new_session=True,
            )
        )
    envs = admin.wait_environments(dict.fromkeys(workers, 1))
    heartbeat = {name: keys.instance(name, envs[name]["instances"][0]) for name in workers}
    samples = {name: Sample(interval, "crash", name) for name in workers}
    ttl = TTL_INTERVALS * interval
    due: dict[str, float] = {}
    for k, name in enumerate(workers):
        since_beat = ttl - client.pttl(heartbeat[name]) / 1000
        phase = interval * (k + 0.5) / n
        due[name] = time.monotonic() + (phase - since_beat) % interval

    def killer(name: str) -> Callable[[], float]:
        def fire() -> float:
            samples[name].expected = client.pttl(heartbeat[name]) / 1000
            at = time.monotonic()
            workers[name].signal_group(signal.SIGKILL)
            return at

        return fire

    seen = Poller(admin, args.poll).until_offline(
        {}, interval + ttl + 15, due, {name: killer(name) for name in workers}
    )
    for name, server in workers.items():
        samples[name].detected = seen.get(name)
        assert server.proc is not None
        server.proc.wait(10)
    return list(samples.values())


def shutdown_samples(
    ws: Workspace,
    admin: Admin,
    args: argparse.Namespace,
    prefix: str,
    interval: float,
    n: int,
) -> list[Sample]:
    """``n`` times: start a worker, SIGTERM its group, time offline and exit."""
    cpus = None if args.no_pin else "1"
    out = []
    for k in range(n):
        name = "shutdown"
        server = ws.start(
            worker_server(
                ws.dir,
                args.redis_url,
                prefix,
                name,
                label=f"w{interval:g}s-{name}{k + 1}",
                interval=interval,
                cpus=cpus,
                new_session=True,
            )
        )
        admin.wait_environments({name: 1})
        sample = Sample(interval, "shutdown", name)
        began = time.monotonic()
        server.signal_group(signal.SIGTERM)
        seen = Poller(admin, args.poll).until_offline({name: began}, TTL_INTERVALS * interval + 15)
        sample.detected = seen.get(name)
        assert server.proc is not None
        server.proc.wait(30)
        sample.exited = time.monotonic() - began
        out.append(sample)
    return out


def measure(
    ws: Workspace, client: redis.Redis, args: argparse.Namespace, interval: float, prefix: str
) -> list[Sample]:
    cpus = None if args.no_pin else "1"
    sup = ws.start(
        supervisor_server(
            ws.dir,
            args.redis_url,
            prefix,
            label=f"supervisor-{interval:g}s",
            interval=interval,
            cpus=cpus,
        )
    )
    admin = Admin(sup)
    n = args.rounds if interval < 5 else args.long_rounds
    cases = args.cases.split(",")
    samples: list[Sample] = []
    try:
        if "crash" in cases:
            began = time.monotonic()
            samples += crash_samples(ws, admin, client, args, prefix, interval, n)
            print(f"#   crash x{n}: {time.monotonic() - began:.0f} s", flush=True)
        if "shutdown" in cases:
            began = time.monotonic()
            samples += shutdown_samples(ws, admin, args, prefix, interval, n)
            print(f"#   shutdown x{n}: {time.monotonic() - began:.0f} s", flush=True)
    finally:
        admin.close()
        sup.stop()
    return samples


def stats(values: list[float | None]) -> tuple[str, str, str]:
    present = [v for v in values if v is not None]
    if not present:
        return "-", "-", "-"
    return fmt(median(present), 2), fmt(min(present), 2), fmt(max(present), 2)


def report(samples: list[Sample], poll: float) -> None:
    print(
        "\n## Seconds from the signal to GET /api/environments showing `offline`"
        f" (poll every {poll:g} s)"
    )
    print("median [min..max] over samples; bound: what the heartbeat design allows\n")
    rows = []
    for interval in sorted({s.interval for s in samples}, reverse=True):
        ttl = TTL_INTERVALS * interval
        for case in ("crash", "shutdown"):
            group = [s for s in samples if s.interval == interval and s.case == case]
            if not group:
                continue
            missed = sum(1 for s in group if s.detected is None)
            if case == "crash":
                bound = f"{fmt(2 * interval, 1)}..{fmt(ttl, 1)} (TTL {fmt(ttl, 1)})"
                lag = [s.lag for s in group]
                extra = "lag after key expiry: median {} [{}..{}] s".format(*stats(lag))
            else:
                bound = "shutdown time (key deleted)"
                extra = "process exited after {} [{}..{}] s".format(
                    *stats([s.exited for s in group])
                )
            if missed:
                extra += f"; {missed} never seen offline"
            rows.append(
                [
                    f"{interval:g} s",
                    "SIGKILL (crash)" if case == "crash" else "SIGTERM (clean)",
                    len(group),
                    *stats([s.detected for s in group]),
                    bound,
                    extra,
                ]
            )
    print(
        table(
            ["interval", "case", "n", "median s", "min s", "max s", "bound s", "note"],
            rows,
        )
    )
    print("\n## Crash samples (expected = PTTL of the heartbeat key at the kill)\n")
    rows = [
        [
            f"{s.interval:g} s",
            s.environment,
            fmt(s.expected, 2),
            fmt(s.detected, 2),
            fmt(None if s.lag is None else s.lag * 1000, 0),
        ]
        for s in samples
        if s.case == "crash"
    ]
    print(table(["interval", "worker", "expected s", "measured s", "lag ms"], rows))


def main() -> int:
    args = parse_args()
    intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    require_redis(args.redis_url)
    start_run(
        f"detection: intervals {args.intervals} s",
        args.no_pin,
        "this script on CPU 0, all servers on CPU 1",
    )
    prefixes: list[str] = []
    samples: list[Sample] = []
    client = redis.Redis.from_url(args.redis_url)
    try:
        with Workspace("detection", keep=args.keep) as ws:
            for interval in intervals:
                prefix = redis_prefix(f"detect{interval:g}")
                prefixes.append(prefix)
                print(f"# interval {interval:g} s, Redis prefix {prefix}", flush=True)
                samples += measure(ws, client, args, interval, prefix)
    finally:
        client.close()
        for prefix in prefixes:
            purge_redis(args.redis_url, prefix)
    report(samples, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
