"""``GET /metrics``: what the host saw, in Prometheus' text format.

Counting happens on the request path, so it is plain integer arithmetic on objects this
process owns (one event loop: no locks), never a prometheus_client metric with its lock
and label lookup per call. prometheus_client builds the families from those numbers when
a scraper asks, and writes the exposition format.

Per app and environment (the environment the request was served in, or on a supervisor
the one it was proxied to): requests by status class, a latency histogram, requests in
flight, WebSocket sessions; boots by reason with a cold-start histogram; idle stops,
evictions and overload rejections. Per environment: command round trips by action and,
on a supervisor, the heartbeat age. Apps by status come from the role at scrape time.
"""

from __future__ import annotations

import hmac
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from nocosup.errors import Unauthorized

if TYPE_CHECKING:
    from nocosup.host import Host
    from nocosup.role import Gateway

#: Request latency buckets (seconds): a warm in-process request takes tens of µs.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
#: Cold starts: from a boot's decision to the app answering its lifespan.
BOOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Why an app booted (the ``reason`` label of nocosup_boots_total).
BOOT_REASONS = ("first_request", "wake", "admin", "host_start")
#: Events counted per app and environment, by metric name.
APP_EVENTS = {
    "idle_stop": ("nocosup_idle_stops", "Apps stopped after their idle timeout."),
    "eviction": ("nocosup_evictions", "Apps put to idle to make room (capacity)."),
    "overload": ("nocosup_overload_rejections", "Requests refused with APP_OVERLOADED."),
    "move": ("nocosup_moves", "Apps moved to the environment by an operator (supervisor)."),
    "failover": ("nocosup_failovers", "Apps moved to the environment by failover (supervisor)."),
}
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Histogram:
    """Cumulative-on-read bucket counts and a sum: ``observe`` is a bisect and two adds."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf's own
        self.total = 0.0

    def observe(self, value: float) -> None:
        bounds = self.bounds
        # most observations fall in the first bucket (a warm request): no bisect for them
        self.counts[0 if value <= bounds[0] else bisect_left(bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class RequestStats:
    """The requests of one app in one environment."""

    __slots__ = ("by_class", "in_flight", "latency", "websockets")

    def __init__(self) -> None:
        self.by_class = [0] * 6  # index: status // 100
        self.in_flight = 0
        self.websockets = 0
        self.latency = Histogram(LATENCY_BUCKETS)

    def observe(self, status: int, seconds: float) -> None:
        """One request answered with ``status`` in ``seconds`` (101: a WebSocket session,
        counted apart and not timed; 0, nothing sent: counted as 5xx)."""
        if status == 101:
            self.websockets += 1
        else:
            self.by_class[status // 100 if 100 <= status < 600 else 5] += 1
            self.latency.observe(seconds)


class Metrics:
    """Everything this process counts (a host has one)."""

    def __init__(self, environment: str) -> None:
        self.environment = environment
        self.requests: dict[tuple[str, str], RequestStats] = {}
        #: The entries of ``requests`` for this process's environment, by app alone.
        self._here: dict[str, RequestStats] = {}
        self.boots: Counter[tuple[str, str, str]] = Counter()
        self.cold_starts: dict[tuple[str, str], Histogram] = {}
        self.app_events: Counter[tuple[str, str, str]] = Counter()
        self.commands: dict[tuple[str, str], Histogram] = {}

    # --- counting ------------------------------------------------------------------------

    async def serve(
        self, gateway: Gateway, name: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run one tenant request through ``gateway``, counted for app ``name``.

        The status is read through a plain function in front of ``send`` that hands back
        ``send``'s own awaitable: no coroutine of its own per message.
        """
        stats = self._here.get(name) or self.stats(name)
        status = 0

        def counted(message: Message) -> Awaitable[None]:
            nonlocal status
            if not status:  # one start message per response
                kind = message["type"]
                if kind == "http.response.start" or kind == "websocket.http.response.start":
                    status = message["status"]
                elif kind == "websocket.accept":
                    status = 101
            return send(message)

        stats.in_flight += 1
        began = perf_counter()
        try:
            await gateway.handle(name, scope, receive, counted)
        finally:
            seconds = perf_counter() - began
            stats.in_flight -= 1
            # on a supervisor the gateway names the environment it proxied to
            proxied = scope.get(PROXIED_TO)
            if proxied is not None and proxied != self.environment:
                stats = self.stats(name, proxied)
            stats.observe(status, seconds)

    def stats(self, app: str, environment: str | None = None) -> RequestStats:
        """The request counters of ``app`` in ``environment`` (default: this process's),
        made on first use."""
        if environment is None:
            environment = self.environment
        key = (app, environment)
        stats = self.requests.get(key)
        if stats is None:
            stats = self.requests[key] = RequestStats()
            if environment == self.environment:
                self._here[app] = stats
        return stats

    def observe(self, app: str, environment: str, status: int, seconds: float) -> None:
        """Count one tenant request of ``app`` served in (or proxied to) ``environment``:
        its status (101: a WebSocket session) and how long it took. For callers that
        time requests themselves (a proxy, say) instead of going through :meth:`serve`."""
        self.stats(app, environment).observe(status, seconds)

    def boot(self, app: str, environment: str, reason: str, seconds: float | None) -> None:
        """A boot of ``app`` ran (``seconds`` to running, None if it failed)."""
        self.boots[(app, environment, reason)] += 1
        if seconds is not None:
            key = (app, environment)
            histogram = self.cold_starts.get(key)
            if histogram is None:
                histogram = self.cold_starts[key] = Histogram(BOOT_BUCKETS)
            histogram.observe(seconds)

    def app_event(self, kind: str, app: str, environment: str) -> None:
        self.app_events[(kind, app, environment)] += 1

    def command(self, environment: str, action: str, seconds: float) -> None:
        key = (environment, action)
        histogram = self.commands.get(key)
        if histogram is None:
            histogram = self.commands[key] = Histogram(COMMAND_BUCKETS)
        histogram.observe(seconds)

    def forget(self, app: str) -> None:
        """Drop the series of a removed app (Prometheus keeps what it scraped)."""
        for table in (self.requests, self.cold_starts):
            for key in [k for k in table if k[0] == app]:
                del table[key]
        self._here.pop(app, None)
        for key3 in [k for k in self.boots if k[0] == app]:
            del self.boots[key3]
        for key3 in [k for k in self.app_events if k[1] == app]:
            del self.app_events[key3]

    # --- exposition ------------------------------------------------------------------------

    def families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "nocosup_requests",
            "Tenant requests answered, by status class.",
            labels=["app", "environment", "code"],
        )
        websockets = CounterMetricFamily(
            "nocosup_websocket_sessions",
            "Tenant WebSocket sessions accepted.",
            labels=["app", "environment"],
        )
        in_flight = GaugeMetricFamily(
            "nocosup_requests_in_flight",
            "Tenant requests being answered now.",
            labels=["app", "environment"],
        )
        latency = HistogramMetricFamily(
            "nocosup_request_duration_seconds",
            "Time to answer a tenant request (HTTP; WebSockets are not timed).",
            labels=["app", "environment"],
        )
        for (app, env), stats in sorted(self.requests.items()):
            for i, label in enumerate(_CLASSES, start=1):
                if stats.by_class[i]:
                    requests.add_metric([app, env, label], stats.by_class[i])
            websockets.add_metric([app, env], stats.websockets)
            in_flight.add_metric([app, env], stats.in_flight)
            latency.add_metric([app, env], stats.latency.buckets(), stats.latency.total)
        yield from (requests, websockets, in_flight, latency)

        boots = CounterMetricFamily(
            "nocosup_boots", "App boots, by reason.", labels=["app", "environment", "reason"]
        )
        for (app, env, reason), count in sorted(self.boots.items()):
            boots.add_metric([app, env, reason], count)
        yield boots
        yield _histograms(
            "nocosup_cold_start_seconds",
            "From a boot's start to the app running.",
            ["app", "environment"],
            self.cold_starts,
        )

        for kind, (metric, help_text) in APP_EVENTS.items():
            family = CounterMetricFamily(metric, help_text, labels=["app", "environment"])
            for (event, app, env), count in sorted(self.app_events.items()):
                if event == kind:
                    family.add_metric([app, env], count)
            yield family

        yield _histograms(
            "nocosup_command_round_trip_seconds",
            "From sending a command to an environment to its last answer (supervisor).",
            ["environment", "action"],
            self.commands,
        )


def _histograms(
    name: str, help_text: str, labels: list[str], table: dict[tuple[str, str], Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=labels)
    for key, histogram in sorted(table.items()):
        family.add_metric(list(key), histogram.buckets(), histogram.total)
    return family


#: Scope key a supervisor's gateway sets to the environment it proxied the request to.
PROXIED_TO = "nocosup.proxied_to"


class _Snapshot(Collector):
    """One scrape's families: the host's counts, then the role's gauges."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def apps_by_status(statuses: Iterable[str]) -> GaugeMetricFamily:
    """``nocosup_apps{status}``: how many (app, environment) pairs are in each status."""
    family = GaugeMetricFamily(
        "nocosup_apps", "Apps by status (one per app and environment).", labels=["status"]
    )
    for status, count in sorted(Counter(statuses).items()):
        family.add_metric([status], count)
    return family


def check_scraper(request: Request) -> None:
    """A scraper sends ``NOCOSUP_METRICS_TOKEN`` (read-only) or the admin token."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    given = value.strip().encode() if scheme.lower() == "bearer" else b""
    host: Any = request.app
    for token in (host.settings.metrics_token, getattr(host.state, "admin_token", None)):
        if token and given and hmac.compare_digest(given, token.encode()):
            return
    raise Unauthorized(
        "missing or wrong token: send 'Authorization: Bearer <NOCOSUP_METRICS_TOKEN>' "
        "(or the admin token)"
    )


async def metrics_endpoint(request: Request) -> Response:
    check_scraper(request)
    host: Host = request.app
    families = [*host.metrics.families(), *await host.role.gauges()]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
