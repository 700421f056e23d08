"""Prometheus metrics of one gateway, in its own registry.

Hot-path counters and histograms use label children cached per route,
code, partner and reason (all bounded: routes and partners come from the
configuration, codes and reasons from the gateway's own code; a path that
is not a route counts as route ``unknown``). Everything that is a level
rather than an event (in-flight counts, connections, lag, overdue requests)
is read from the live state when scraped, so it costs nothing per request.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Protocol, Sized

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import exposition
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector

from . import about, outcomes, tail
from .admission import SHED_REASONS, Admission
from .breaker import STATES
from .config import Config
from .inflight import OverdueWatch
from .lag import ReactorLag
from .memory import collector_pauses, collector_seconds, pypy_gc_stats
from .poolstats import upstream_key, upstream_label
from .snapshot import PartnerState, Snapshot
from .upstream import Upstream

if TYPE_CHECKING:
    from .fanout import Fanout

UNKNOWN_ROUTE = "unknown"
# From 1 ms to 1 s in steps that keep p50 and p99 readable, then a tail.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2,
                   0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
# At most this many distinct limits (partner timeouts, the deadline) get bounds
# of their own: each adds two buckets to every partner's and route's series.
MAX_LIMIT_BOUNDS = 16


def latency_buckets(config: Config) -> tuple[float, ...]:
    """LATENCY_BUCKETS, plus a bound at each partner timeout and at the
    deadline, and one just above each (2% more, at least 1 ms). Calls cut by
    a timeout end a little after it; without these bounds they fall in a
    coarse bucket (300.4 ms in 0.3..0.4 s) and a quantile interpolated there
    reads far above the timeout (396 ms). Taken from the configuration at
    start-up; a reload keeps them."""
    limits = collections.Counter([p.timeout_ms for p in config.partners.values()])
    limits[config.server.deadline_ms] += 1
    bounds = set(LATENCY_BUCKETS)
    for ms, _ in limits.most_common(MAX_LIMIT_BOUNDS):
        bounds.update((ms / 1000.0, (ms + max(1.0, ms * 0.02)) / 1000.0))
    return tuple(sorted(bounds))


# What generate_latest() writes (prometheus-client's own server says so;
# its CONTENT_TYPE_LATEST became 1.0.0 in 0.22, 0.0.4 before).
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)

# No ``*_created`` series: they double the exposition and no dashboard uses
# them (a process-wide switch of prometheus-client).
disable_created_metrics()


class ClientFace(Protocol):
    """What the metrics read of the site that serves clients when scraped."""

    @property
    def open_connections(self) -> int: ...

    @property
    def held(self) -> Sized:
        """Connections whose 503 or next request is held back (pacing)."""

    @property
    def queue(self) -> "QueueFace":
        """Requests waiting for an in-flight slot."""


class QueueFace(Protocol):
    """What the metrics read of the requests waiting for a slot."""

    total: int  # requests that ever waited

    def __len__(self) -> int: ...


class LiveView(Protocol):
    """What the metrics read of a gateway when scraped."""

    admission: Admission
    overdue: OverdueWatch
    lag: ReactorLag
    snapshot: Snapshot
    upstream: Upstream
    clients: ClientFace | None  # the site serving it, once there is one


def circuit_open(state: PartnerState) -> bool:
    """Whether a partner's breaker is open or half-open (not yet trusted)."""
    return state.breaker is not None and state.breaker.is_open


class _PartnerChildren:
    __slots__ = ("outcomes", "duration")

    def __init__(self, calls: Counter, duration: Histogram, partner: str) -> None:
        self.outcomes = {o: calls.labels(partner, o) for o in outcomes.ALL}
        self.duration = duration.labels(partner)


class GatewayMetrics:
    """The gateway's metrics; ``exposition()`` is the /metrics body."""

    def __init__(self, gateway: LiveView) -> None:
        self.registry = registry = CollectorRegistry()
        buckets = latency_buckets(gateway.snapshot.config)
        self._requests = Counter(
            "txfanout_requests", "Requests answered, by route and HTTP status "
            "(499: the client went away first).", ("route", "code"), registry=registry)
        self._duration = Histogram(
            "txfanout_request_duration_seconds", "Time from arrival to answer, by route.",
            ("route",), buckets=buckets, registry=registry)
        self._answers = Counter(
            "txfanout_answers", "200 answers by route and completeness (complete: every "
            "selected partner was called and answered, ok or http_error).",
            ("route", "complete"), registry=registry)
        self._breaker_transitions = Counter(
            "txfanout_breaker_transitions", "Circuit breaker changes of state, by partner and "
            "the state entered (each is also logged with its reason).",
            ("partner", "state"), registry=registry)
        self._shed = Counter(
            "txfanout_shed", "Requests refused at admission (503), by reason.",
            ("reason",), registry=registry)
        self._calls = Counter(
            "txfanout_partner_calls", "Partner calls by outcome (shed, open, skipped and "
            "rate_limited calls were not made).", ("partner", "outcome"), registry=registry)
        self._idle_closed = Counter(
            "txfanout_idle_closed", "Client connections closed for being idle past "
            "server.idle_timeout_ms (not logged one by one).", registry=registry)
        self._abandoned_in_backlog = Counter(
            "txfanout_abandoned_in_backlog", "Client connections their client closed while "
            "they waited in the listening socket's backlog: closed at accept, nothing read.",
            registry=registry)
        self._call_duration = Histogram(
            "txfanout_partner_call_duration_seconds", "Duration of the partner calls "
            "that were made, whatever their outcome.", ("partner",),
            buckets=buckets, registry=registry)
        self._tail = Histogram(
            "txfanout_partner_tail_ratio", "Tail-sampled timeouts (tail_sample) by when they "
            "ended, over their timeout: an answer at its latency / timeout, no answer by "
            f"{tail.BOUND:g} x the timeout (or an error) at +Inf.", ("partner",),
            buckets=tail.BUCKETS, registry=registry)
        Gauge("txfanout_build_info", "Always 1: the txfanout version, and the Python and "
              "Twisted it runs on.", ("version", "python", "twisted"),
              registry=registry).labels(**about.build_info()).set(1)
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(LiveCollector(gateway))
        if collector_seconds() is not None:
            registry.register(CollectorTime())
        elif pypy_gc_stats is not None:
            registry.register(PyPyCollectorTime())
        self._request_children: dict[tuple[str, int], Any] = {}
        self._answer_children: dict[str, tuple[Any, Any]] = {}
        self._duration_children: dict[str, Any] = {}
        self._shed_children: dict[str, Any] = {}
        self._partner_children: dict[str, _PartnerChildren] = {}
        for reason in SHED_REASONS:  # pre-created, so that rate() sees them from the start
            self._shed_child(reason)
        self.compile(gateway.snapshot.config)

    def compile(self, config: Config) -> None:
        """Create the children of a configuration's routes and partners up
        front (their series exist at 0 from the start). Names that appear
        later (a reloaded configuration) are created on first use."""
        for route in (*config.routes, UNKNOWN_ROUTE):
            self._route_duration(route)
        for route in config.routes:
            self._route_answers(route)
        for partner in config.partners:
            self._partner(partner)
            self._tail.labels(partner)
            for state in STATES:
                self._breaker_transitions.labels(partner, state)

    # -- the hot path --

    def request_ended(self, route: str, code: int, elapsed: float | None) -> None:
        """One answered request (``elapsed`` None: never reached the gateway's
        clock, e.g. refused while its body was read)."""
        child = self._request_children.get((route, code))
        if child is None:
            child = self._request_children[(route, code)] = \
                self._requests.labels(route, str(code))
        child.inc()
        if elapsed is not None:
            self._route_duration(route).observe(elapsed)

    def fanout_ended(self, fanout: "Fanout") -> None:
        """Count every partner call of a finished fan-out."""
        for name, result in zip(fanout.partners, fanout.results):
            if result is None:
                continue
            children = self._partner_children.get(name) or self._partner(name)
            children.outcomes[result.outcome].inc()
            if result.outcome not in outcomes.NOT_CALLED:
                children.duration.observe(result.latency_ms / 1000.0)

    def tail_ended(self, partner: str, ratio: float) -> None:
        """A tail sample of ``partner`` ended (see tail.py)."""
        self._tail.labels(partner).observe(ratio)

    def answered(self, route: str, complete: bool) -> None:
        """One 200 answer on ``route``, complete or not."""
        children = self._answer_children.get(route) or self._route_answers(route)
        children[complete].inc()

    def breaker_changed(self, partner: str, state: str) -> None:
        """A partner's breaker entered ``state``."""
        self._breaker_transitions.labels(partner, state).inc()

    def shed(self, reason: str) -> None:
        """One request refused at admission for ``reason`` (a constant of the
        caller, e.g. SHED_MAX_INFLIGHT)."""
        (self._shed_children.get(reason) or self._shed_child(reason)).inc()

    def idle_closed(self) -> None:
        """One idle client connection closed by its keep-alive timeout."""
        self._idle_closed.inc()

    def abandoned_in_backlog(self) -> None:
        """One connection its client closed before the gateway accepted it."""
        self._abandoned_in_backlog.inc()

    # -- creation of children (bounded by the config and the code) --

    def _route_duration(self, route: str) -> Any:
        child = self._duration_children.get(route)
        if child is None:
            child = self._duration_children[route] = self._duration.labels(route)
        return child

    def _route_answers(self, route: str) -> tuple[Any, Any]:
        """(incomplete, complete) children of ``route``."""
        children = self._answer_children[route] = (self._answers.labels(route, "false"),
                                                    self._answers.labels(route, "true"))
        return children

    def _partner(self, name: str) -> _PartnerChildren:
        children = _PartnerChildren(self._calls, self._call_duration, name)
        self._partner_children[name] = children
        return children

    def _shed_child(self, reason: str) -> Any:
        child = self._shed.labels(reason)
        self._shed_children[reason] = child
        return child

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class _Levels(NamedTuple):
    """The families the live collector fills at each scrape."""

    inflight: GaugeMetricFamily
    limit: GaugeMetricFamily
    overdue: GaugeMetricFamily
    lag: GaugeMetricFamily
    partner_inflight: GaugeMetricFamily
    breaker: GaugeMetricFamily
    partner_upstream: GaugeMetricFamily
    partner_max_rps: GaugeMetricFamily
    partner_timeout: GaugeMetricFamily
    partner_tail_running: GaugeMetricFamily
    connections: GaugeMetricFamily
    opened: CounterMetricFamily
    closed: CounterMetricFamily
    client_connections: GaugeMetricFamily
    held_connections: GaugeMetricFamily
    queued: GaugeMetricFamily
    queued_total: CounterMetricFamily

    @classmethod
    def empty(cls) -> "_Levels":
        return cls(
            GaugeMetricFamily("txfanout_inflight_requests", "Requests being served."),
            GaugeMetricFamily("txfanout_inflight_limit",
                              "Requests admitted at once now: max_inflight, lowered while "
                              "the event loop lags (adaptive_inflight)."),
            GaugeMetricFamily("txfanout_overdue_inflight",
                              "Requests still in flight well past their deadline "
                              "(a leak: must stay 0)."),
            GaugeMetricFamily("txfanout_reactor_lag_seconds",
                              "How late the reactor ran its last lag probe."),
            GaugeMetricFamily("txfanout_partner_inflight", "Calls in flight per partner.",
                              labels=["partner"]),
            GaugeMetricFamily("txfanout_partner_circuit_open",
                              "1 while the partner's circuit breaker is open.",
                              labels=["partner"]),
            GaugeMetricFamily("txfanout_partner_upstream",
                              "Always 1: which upstream (scheme://host:port) a partner "
                              "is called on.", labels=["partner", "upstream"]),
            GaugeMetricFamily("txfanout_partner_max_rps",
                              "This process's share of a partner's max_rps (max_rps / "
                              "workers), for partners with one.", labels=["partner"]),
            GaugeMetricFamily("txfanout_partner_timeout_seconds",
                              "A partner's timeout now: timeout_ms, or less with "
                              "adaptive_timeout.", labels=["partner"]),
            GaugeMetricFamily("txfanout_partner_tail_running",
                              "Tail-sampled timeouts still running on, per partner "
                              "(each holds one of the partner's max_concurrency).",
                              labels=["partner"]),
            GaugeMetricFamily("txfanout_upstream_connections",
                              "Connections to an upstream, idle (pooled) or active.",
                              labels=["upstream", "state"]),
            CounterMetricFamily("txfanout_upstream_connections_opened",
                                "Connections opened to an upstream.", labels=["upstream"]),
            CounterMetricFamily("txfanout_upstream_connections_closed",
                                "Connections to an upstream that were closed.",
                                labels=["upstream"]),
            GaugeMetricFamily("txfanout_client_connections",
                              "Client connections open (at most server.max_connections)."),
            GaugeMetricFamily("txfanout_client_connections_held",
                              "Client connections paced for not waiting their Retry-After: "
                              "their 503 or next request held back (server.pace_ms)."),
            GaugeMetricFamily("txfanout_queued_requests",
                              "Requests waiting for an in-flight slot (a burst's, within "
                              "a lag period of the slots filling)."),
            CounterMetricFamily("txfanout_queued",
                                "Requests that waited for an in-flight slot (each then "
                                "admitted or refused, as any request)."),
        )


class CollectorTime:
    """The cyclic collector's time (CPython), by generation."""

    def describe(self) -> Iterable[Metric]:
        return list(self._families([0.0, 0.0, 0.0]))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(collector_seconds() or [0.0, 0.0, 0.0]))

    @staticmethod
    def _families(seconds: list[float]) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "txfanout_gc_seconds", "Time CPython's cyclic collector took, by generation "
            "(2: full collections, which walk every live object); absent on PyPy.",
            labels=["generation"])
        for generation, spent in enumerate(seconds):
            family.add_metric([str(generation)], spent)
        yield family


class PyPyCollectorTime:
    """PyPy's collector time, minor and major collections together."""

    def describe(self) -> Iterable[Metric]:
        return [self._family(0.0)]

    def collect(self) -> Iterable[Metric]:
        return [self._family(collector_pauses())]

    @staticmethod
    def _family(seconds: float) -> Metric:
        return CounterMetricFamily(
            "txfanout_pypy_gc_seconds", "Time PyPy's collector took, minor and major "
            "collections (its own count); absent on CPython.", value=seconds)


class LiveCollector:
    """Levels read from the gateway when scraped."""

    def __init__(self, gateway: LiveView) -> None:
        self._gateway = gateway

    def describe(self) -> Iterable[Metric]:
        return list(_Levels.empty())

    def collect(self) -> Iterable[Metric]:
        levels = _Levels.empty()
        g = self._gateway
        levels.inflight.add_metric([], g.admission.admitted)
        levels.limit.add_metric([], g.admission.limit.current)
        levels.overdue.add_metric([], g.overdue.scan())
        levels.lag.add_metric([], g.lag.lag)
        for name, state in g.snapshot.partners.items():
            levels.partner_inflight.add_metric([name], state.slots.inflight)
            levels.breaker.add_metric([name], 1.0 if circuit_open(state) else 0.0)
            levels.partner_upstream.add_metric(
                [name, upstream_label(upstream_key(state.config.url))], 1.0)
            if state.bucket is not None:
                levels.partner_max_rps.add_metric([name], state.bucket.rate)
            levels.partner_timeout.add_metric([name], state.timeout_ms / 1000.0)
            levels.partner_tail_running.add_metric([name], g.upstream.tails.running.get(name, 0))
        for row in g.upstream.connections.view(g.upstream.pool):
            levels.connections.add_metric([row.upstream, "idle"], row.idle)
            levels.connections.add_metric([row.upstream, "active"], row.active)
            levels.opened.add_metric([row.upstream], row.opened)
            levels.closed.add_metric([row.upstream], row.closed)
        if g.clients is not None:
            levels.client_connections.add_metric([], g.clients.open_connections)
            levels.held_connections.add_metric([], len(g.clients.held))
            levels.queued.add_metric([], len(g.clients.queue))
            levels.queued_total.add_metric([], g.clients.queue.total)
        return list(levels)
