"""The gateway: its live state, and the handler every admitted request runs.

The handler reads as the request path does: parse (inbound.py), target and
budget (the snapshot's table, budget.py), fan out (fanout.py), answer
(answer.py). ``Gateway`` holds what requests share: the configuration
snapshot, the admission control, the partner pool, the requests in flight,
the metrics and the access log.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import IResource

from . import answer, outcomes
from .accesslog import AccessLog
from .admission import SHED_PARTNERS_UNAVAILABLE, Admission
from .config import Config, ServerConfig
from .endpoint import KleinEndpoint
from .fanout import Fanout
from .inbound import Inbound, Refused, RequestIds, parse
from .inflight import OverdueWatch
from .lag import ReactorLag
from .memory import collector_pauses
from .metrics import UNKNOWN_ROUTE, ClientFace, GatewayMetrics
from .outcomes import CallResult
from .site import GatewayRequest
from .snapshot import compile_snapshot
from .upstream import Upstream, idle_caps
from .wire import RETRY_AFTER, SHED_MESSAGES

log = Logger()

ENDPOINT = "handle"  # the Klein endpoint every admitted request runs


def _timeouts_ms(config: Config) -> list[int]:
    return [partner.timeout_ms for partner in config.partners.values()]


class Gateway:
    """The fan-out gateway: live state and its Klein app."""

    app = Klein()

    def __init__(self, reactor: Any, config: Config, workers: int = 1) -> None:
        self.clock = reactor
        self.lag = ReactorLag(reactor, paused=collector_pauses)
        self.workers = workers  # processes sharing each partner's max_rps
        self.snapshot = compile_snapshot(config, reactor, lag=self.lag,
                                         breaker_changed=self._breaker_changed,
                                         workers=workers)
        self.upstream = Upstream(reactor, config.upstream.idle_timeout_ms / 1000.0,
                                 idle_caps(config.partners.values()))
        self.inflight: set[Fanout] = set()
        self.ready = False  # /readyz: False while starting and draining
        self.closing = False  # draining, still serving: answers close their connections
        self.overdue = OverdueWatch(reactor, self.inflight)
        self.clients: ClientFace | None = None  # the site serving it: it sets this
        self.metrics = GatewayMetrics(self)
        self.upstream.tails.observe = self.metrics.tail_ended
        self.admission = Admission(reactor, self.lag, config.server, self.metrics.shed,
                                   _timeouts_ms(config))
        self.access_log: AccessLog | None = None
        self._ids = RequestIds()

    @property
    def server(self) -> ServerConfig:
        return self.snapshot.config.server

    def resource(self) -> IResource:
        return KleinEndpoint(self.app, ENDPOINT)

    def route(self, path: bytes) -> str | None:
        return self.snapshot.routes.get(path)

    def reconfigure(self, config: Config) -> None:
        """Serve ``config`` from now on. Requests in flight finish on the
        snapshot they started with; partners whose config is unchanged keep
        their state; the pool is resized for the new caps."""
        old = self.snapshot.config
        self.snapshot = compile_snapshot(config, self.clock, self.snapshot.partners, self.lag,
                                         self._breaker_changed, self.workers)
        self.upstream.resize(config.upstream.idle_timeout_ms / 1000.0,
                             idle_caps(config.partners.values()))
        self.metrics.compile(config)
        self.admission.configure(config.server, _timeouts_ms(config))
        if config.log != old.log:
            if self.access_log is not None:
                self.access_log.close()
            self.access_log = AccessLog.from_config(config.log)
        elif self.access_log is not None:
            self.access_log.reopen()  # after logrotate moved the file

    # -- counting what ended (called by the site) --

    def request_ended(self, request: GatewayRequest, code: int) -> None:
        """Count (and maybe log) one request that was answered or abandoned."""
        exchange = request.exchange
        assert exchange is not None  # complete: refusals before are refused_on_wire
        route = exchange.route or UNKNOWN_ROUTE
        elapsed, fanout = self.clock.seconds() - exchange.started, exchange.fanout
        self.metrics.request_ended(route, code, elapsed)
        if code == 200 and exchange is not None and exchange.complete is not None:
            self.metrics.answered(route, exchange.complete)
        if self.access_log is not None:
            self.access_log.request_ended(fanout, route, code, elapsed)

    def refused_on_arrival(self, path: bytes, reason: str) -> None:
        route = self.route(path) or UNKNOWN_ROUTE
        self.metrics.request_ended(route, 503, 0.0)
        if self.access_log is not None:
            self.access_log.request_ended(None, route, 503, 0.0)

    def refused_on_wire(self, path: bytes | None, code: int, elapsed: float | None) -> None:
        # Counted, not timed: a slowloris 408 would otherwise be a route's
        # slowest "answer" (the duration histogram has no code label).
        route = (self.route(path) if path is not None else None) or UNKNOWN_ROUTE
        self.metrics.request_ended(route, code, None)
        if self.access_log is not None:
            self.access_log.request_ended(None, route, code, elapsed)

    def idle_closed(self) -> None:
        self.metrics.idle_closed()

    def abandoned_in_backlog(self) -> None:
        self.metrics.abandoned_in_backlog()

    def _breaker_changed(self, partner: str, old: str, new: str, why: str) -> None:
        log.warn("partner {partner}: circuit breaker {old} -> {new} ({why})",
                 partner=partner, old=old, new=new, why=why)
        self.metrics.breaker_changed(partner, new)

    # -- the one public route --

    # Every configured route's path: the site has matched it (site.py), and
    # KleinEndpoint runs this endpoint without Klein's router (endpoint.py).
    @app.route("/", branch=True, endpoint=ENDPOINT)
    def handle(self, request: GatewayRequest) -> Any:
        snapshot, exchange = self.snapshot, request.exchange
        assert exchange is not None and exchange.route is not None  # see site.py
        body = request.content.read() if request.content is not None else b""
        try:
            inbound = parse(snapshot, exchange.route, request.method, request.requestHeaders,
                            body, exchange.started, self._ids)
        except Refused as e:
            if e.allow is not None:
                request.setHeader(b"Allow", e.allow)
            return answer.json_error(request, e.code, e.message)
        partners = snapshot.select(inbound.route, inbound.country, inbound.os)
        fanout = exchange.fanout = Fanout(self.clock, self.upstream, snapshot.config.server,
                                          inbound.request_id, inbound.route, inbound.budget)
        self.inflight.add(fanout)
        done = fanout.run(partners, inbound.body, snapshot.rules.get(inbound.route))
        return done.addBoth(self._forget, fanout).addCallback(
            self._answer, request, inbound, snapshot.config.server.max_answer_bytes)

    def _forget(self, result: Any, fanout: Fanout) -> Any:
        self.inflight.discard(fanout)
        self.metrics.fanout_ended(fanout)
        return result

    def _answer(self, results: list[CallResult], request: GatewayRequest,
                inbound: Inbound, max_bytes: int) -> bytes:
        if _no_partner_callable(results):
            # A 200 whose partners all went uncalled (no slot, or circuit
            # open) would be hollow, and the client could not tell to retry.
            self.admission.refused(SHED_PARTNERS_UNAVAILABLE)
            request.setHeader(b"Retry-After", RETRY_AFTER)
            return answer.json_error(request, 503, SHED_MESSAGES[SHED_PARTNERS_UNAVAILABLE])
        elapsed = self.clock.seconds() - inbound.budget.started
        body, complete = answer.results(request, inbound, results, elapsed, max_bytes)
        assert request.exchange is not None
        request.exchange.complete = complete
        return body

    def start(self) -> None:
        """Start the background work (the lag monitor, which the adaptive
        in-flight limit follows)."""
        self.lag.start()

    def close(self) -> Deferred[None]:
        """Stop background work; close the pooled connections."""
        self.lag.stop()
        if self.access_log is not None:
            self.access_log.close()
        return self.upstream.close()


def _no_partner_callable(results: list[CallResult]) -> bool:
    """No partner was called, and not only for want of time (``skipped``:
    the request's own deadline): some had no slot, or an open circuit."""
    return bool(results) and all(r.outcome in outcomes.NOT_CALLED for r in results) \
        and any(r.outcome != outcomes.SKIPPED for r in results)
