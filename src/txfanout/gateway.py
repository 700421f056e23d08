"""The public face: admission, parsing, targeting, fan-out, the answer.

``Gateway`` holds the live state (config snapshot, partner states, the pool,
requests in flight) and the Klein app; ``GatewaySite`` serves it with a
request class that refuses over-limit requests and oversized bodies before
anything else is spent on them.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from klein import Klein
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from . import outcomes, tls
from .accesslog import AccessLog
from .config import Config
from .conncap import CappedChannel, CappedSite
from .fanout import Fanout, PartnerState
from .inflight import OverdueWatch
from .lag import ReactorLag
from .limit import InflightLimit
from .metrics import (
    CLIENT_CLOSED,
    SHED_DRAINING,
    SHED_MAX_INFLIGHT,
    SHED_REACTOR_LAG,
    UNKNOWN_ROUTE,
    GatewayMetrics,
)
from .outcomes import CallResult
from . import sendnow
from .sendnow import write_now, write_soon
from .wire import SHED_ANSWERS, raw_error, sole_request
from .targeting import BadTargeting, Selector, json_field, os_from_user_agent, parse_country, parse_os
from .upstream import Upstream, idle_caps

log = Logger()

_ROUTE_PATH = re.compile(rb"^/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_HOST = re.compile(rb"^[\x21-\x7e]{0,255}$")
_COMPLETE = frozenset((outcomes.OK, outcomes.HTTP_ERROR))


# Limits on what a client may send before its request is routed.
MAX_LINE_BYTES = 8192      # request line, and each header line
MAX_HEAD_BYTES = 16384     # request line and all headers
MAX_HEADERS = 100

def json_body(request: Request, body: bytes) -> bytes:
    """Mark ``body`` as the JSON answer, with its length (no chunking)."""
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def json_error(request: Request, code: int, message: str) -> bytes:
    """Set ``code`` and return the JSON error body ``{"error": message}``."""
    request.setResponseCode(code)
    return json_body(request, json.dumps({"error": message}).encode("utf-8"))


def write_error(request: Request, code: int, message: str, close: bool = False) -> None:
    """Answer ``request`` at once with a JSON error (outside Klein)."""
    body = json_error(request, code, message)
    if close:
        request.setHeader(b"Connection", b"close")
        request.channel.persistent = False  # and do close it after this answer
    request.write(body)
    request.finish()


@dataclass(frozen=True)
class Snapshot:
    """One configuration, compiled: what a request runs on from start to end."""

    config: Config
    selector: Selector
    partners: dict[str, PartnerState]
    country_header: bytes
    country_path: tuple[str, ...]
    os_header: bytes
    os_path: tuple[str, ...]
    deadline_header: bytes
    route_labels: dict[bytes, str]  # b"/bid" -> "bid": the route label of a path


def compile_snapshot(config: Config, clock: IReactorTime,
                     previous: Mapping[str, PartnerState] = {},
                     lag: ReactorLag | None = None) -> Snapshot:
    """Compile ``config``; a partner whose PartnerConfig is unchanged keeps
    its state from ``previous`` (so its in-flight count and breaker stay true)."""
    tls.warn_unverified(config.partners)
    t = config.targeting
    partners = {}
    for name, p in config.partners.items():
        old = previous.get(name)
        if old is not None and old.config == p:
            partners[name] = old
        else:  # new or changed: fresh state, but calls in flight still count
            partners[name] = PartnerState(p, clock, lag, old.slots if old is not None else None)
    return Snapshot(
        config=config, selector=Selector(config), partners=partners,
        country_header=t.country_header.encode("ascii"),
        country_path=tuple(t.country_field.split(".")),
        os_header=t.os_header.encode("ascii"), os_path=tuple(t.os_field.split(".")),
        deadline_header=config.server.deadline_header.encode("ascii"),
        route_labels={b"/" + name.encode("ascii"): name for name in config.routes})


class Gateway:
    """The fan-out gateway: live state and its Klein app."""

    app = Klein()

    def __init__(self, reactor: Any, config: Config) -> None:
        self.clock = reactor
        self.lag = ReactorLag(reactor)
        server = config.server
        self.limit = InflightLimit(reactor, server.max_inflight, server.adaptive_inflight)
        self.snapshot = compile_snapshot(config, reactor, lag=self.lag)
        self.upstream = Upstream(reactor, config.upstream.idle_timeout_ms / 1000.0,
                                 idle_caps(config.partners.values()))
        self.inflight: set[Fanout] = set()
        self.admitted = 0
        self.admitted_total = 0
        self.draining = False
        self._idle_waiters: list[Deferred[None]] = []
        self.ready = False  # /readyz: False while starting and draining
        self.overdue = OverdueWatch(reactor, self.inflight)
        self.metrics = GatewayMetrics(self)
        self.access_log: AccessLog | None = None
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = 0

    # -- admission (called by GatewayRequest before any parsing) --

    def shed_reason(self) -> str | None:
        """Why a request arriving now would be refused; None: it would not."""
        server = self.snapshot.config.server
        if self.draining:
            return SHED_DRAINING
        if self.admitted >= self.limit.current:
            return SHED_MAX_INFLIGHT
        if server.max_lag_ms and self.lag.recent * 1000.0 > server.max_lag_ms:
            return SHED_REACTOR_LAG
        return None

    def admit(self) -> str | None:
        """Take an in-flight slot; or say why not (the shed reason)."""
        reason = self.shed_reason()
        if reason is None:
            self.admitted += 1
            self.admitted_total += 1
            return None
        self.metrics.shed(reason)
        return reason

    def shed_on_arrival(self, path: bytes, reason: str) -> None:
        """Count a request the channel refused unparsed (see GatewayChannel)."""
        self.metrics.shed(reason)
        route = self.snapshot.route_labels.get(path, UNKNOWN_ROUTE)
        self.metrics.request_ended(route, 503, 0.0)
        if self.access_log is not None:
            self.access_log.request_ended(None, route, 503, 0.0)

    def release(self) -> None:
        self.admitted -= 1
        if not self.admitted and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires when no admitted request is left (at once if none is)."""
        if not self.admitted:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def reconfigure(self, config: Config) -> None:
        """Serve ``config`` from now on. Requests in flight finish on the
        snapshot they started with; partners whose config is unchanged keep
        their state; the pool is resized for the new caps."""
        old = self.snapshot.config
        self.snapshot = compile_snapshot(config, self.clock, self.snapshot.partners, self.lag)
        self.upstream.resize(config.upstream.idle_timeout_ms / 1000.0,
                             idle_caps(config.partners.values()))
        self.metrics.compile(config)
        self.limit.configure(config.server.max_inflight, config.server.adaptive_inflight)
        if config.log != old.log:
            if self.access_log is not None:
                self.access_log.close()
            self.access_log = AccessLog.from_config(config.log)
        elif self.access_log is not None:
            self.access_log.reopen()  # after logrotate moved the file

    def _request_id(self, request: Request) -> str:
        given = request.getHeader(b"X-Request-Id")
        if given is not None and _REQUEST_ID.match(given):
            return given.decode("ascii")
        self._id_counter += 1
        return f"{self._id_prefix}-{self._id_counter:x}"

    def request_ended(self, request: "GatewayRequest", code: int) -> None:
        """Count (and maybe log) one request that was answered or abandoned."""
        started = request.started
        elapsed = None if started is None else self.clock.seconds() - started
        route = self.snapshot.route_labels.get(request.path, UNKNOWN_ROUTE) \
            if started is not None else UNKNOWN_ROUTE
        self.metrics.request_ended(route, code, elapsed)
        if self.access_log is not None:
            self.access_log.request_ended(request.fanout, route, code, elapsed)

    # -- the one public route --

    @app.route("/", branch=True)
    def handle(self, request: Request) -> Any:
        snapshot = self.snapshot
        server = snapshot.config.server
        match = _ROUTE_PATH.match(request.path)
        route = match.group(1).decode("ascii") if match else None
        if route is None or not snapshot.selector.has_route(route):
            return json_error(request, 404, "no such route")
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            return json_error(request, 405, "use POST")

        body = request.content.read() if request.content is not None else b""
        document: Any = None
        if body.strip():
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                return json_error(request, 400, "body is not valid JSON")

        try:
            country, os_name = self._targeting(snapshot, request, document)
        except BadTargeting as e:
            return json_error(request, 400, str(e))

        started = request.started
        budget_ms = server.deadline_ms
        asked = request.getHeader(snapshot.deadline_header)
        if asked is not None:
            if not asked.isascii() or not asked.isdigit() or not 0 < len(asked) <= 9 \
                    or int(asked) == 0:
                return json_error(request, 400,
                                  f"{server.deadline_header} must be a positive integer (ms)")
            budget_ms = min(budget_ms, int(asked))

        request_id = self._request_id(request)
        partners = [snapshot.partners[p.name]
                    for p in snapshot.selector.select(route, country, os_name)]
        fanout = Fanout(self.clock, self.upstream, server, request_id, route,
                        started, started + budget_ms / 1000.0)
        self.inflight.add(fanout)
        request.fanout = fanout

        def answer(results: list[CallResult]) -> bytes:
            elapsed = self.clock.seconds() - started
            if elapsed * 1000.0 > budget_ms or any(r.unread for r in results):
                self.limit.answered_late()
            else:
                self.limit.answered_in_time()
            complete = all(r.outcome in _COMPLETE for r in results)
            request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
            request.setHeader(b"X-Fanout-Complete", b"true" if complete else b"false")
            return json_body(request, json.dumps({
                "request_id": request_id, "route": route, "complete": complete,
                "elapsed_ms": round(elapsed * 1000.0, 1),
                "results": [r.to_json() for r in results],
            }).encode("utf-8"))

        def forget(result: Any) -> Any:
            self.inflight.discard(fanout)
            self.metrics.fanout_ended(fanout)
            return result

        return fanout.run(partners, body).addBoth(forget).addCallback(answer)

    @staticmethod
    def _targeting(snapshot: Snapshot, request: Request,
                   document: Any) -> tuple[str | None, str]:
        t = snapshot.config.targeting
        country: str | None = None
        raw = request.getHeader(snapshot.country_header)
        if raw is not None:
            country = parse_country(raw, t.country_header)
        else:
            value = json_field(document, snapshot.country_path)
            if value is not None:
                country = parse_country(value, t.country_field)
        raw = request.getHeader(snapshot.os_header)
        if raw is not None:
            return country, parse_os(raw, t.os_header)
        value = json_field(document, snapshot.os_path)
        if value is not None:
            return country, parse_os(value, t.os_field)
        return country, os_from_user_agent(request.requestHeaders.getRawHeaders(
            b"User-Agent", [b""])[0])

    def start(self) -> None:
        """Start the background work (the lag monitor)."""
        self.lag.start()
        sendnow.follow(self.lag)

    def close(self) -> Any:
        """Stop background work; close the pooled connections."""
        self.lag.stop()
        if self.access_log is not None:
            self.access_log.close()
        return self.upstream.close()


class GatewayRequest(Request):
    """A request that is admitted (or refused with 503) before it is routed,
    and whose body is refused with 413 past ``max_body_bytes`` without being
    buffered."""

    _admitted = False
    _refused = False
    _body_size = 0
    arrived: float | None = None  # when its first byte was read (set by the channel)
    started: float | None = None  # when the deadline starts: arrival, else processing
    fanout: Fanout | None = None

    def _gateway(self) -> Gateway:
        return self.channel.site.gateway  # type: ignore[no-any-return]

    def gotLength(self, length: int | None) -> None:
        limit = self._gateway().snapshot.config.server.max_body_bytes
        if length is not None and length > limit:
            self._refuse_body(limit)
            return
        # In memory whatever the length: bodies are capped at max_body_bytes
        # (Twisted would spool a body of unknown length to a temporary file).
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_size += len(data)
        limit = self._gateway().snapshot.config.server.max_body_bytes
        if self._body_size > limit:
            self._refuse_body(limit)
            return
        super().handleContentChunk(data)

    def _refuse_body(self, limit: int) -> None:
        """Answer 413 now and close: the rest of the body is never read."""
        self._refused = True
        self.content = None
        self.channel.refuse(413, f"body over {limit} bytes")
        self._gateway().request_ended(self, 413)

    def process(self) -> None:
        if self._refused:
            return
        self.site = self.channel.site
        gateway = self.site.gateway
        self.started = self.arrived or gateway.clock.seconds()
        # Anything but a route name never reaches Klein (which would log a
        # traceback for a path or Host that is not UTF-8), nor takes a slot.
        if not _ROUTE_PATH.match(self.path):
            write_error(self, 404, "no such route")
            return
        hosts = self.requestHeaders.getRawHeaders(b"Host")
        if hosts is None:
            if self.clientproto == b"HTTP/1.1":  # RFC 9112 3.2: Host is required
                write_error(self, 400, "missing Host header")
                return
        elif len(hosts) > 1 or not _HOST.match(hosts[0]):
            write_error(self, 400, "bad Host header")
            return
        refused = gateway.admit()
        if refused is not None:
            self._shed(refused)
            return
        self._admitted = True
        super().process()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name == b"Server":
            return  # Twisted names itself and its version: nothing a client needs
        super().setHeader(name, value)

    def _shed(self, reason: str) -> None:
        """Answer 503 as cheaply as it can be done: refusing must cost far
        less than serving, or clients that retry at once (ignoring
        Retry-After) eat the capacity the refusals were meant to protect."""
        keep = self.channel.persistent and reason != SHED_DRAINING
        if not keep:
            self.channel.persistent = False
        self.code = 503
        self.startedWriting = 1  # the whole answer goes out as one prepared write
        write_now(self.channel.transport, SHED_ANSWERS[reason, keep])
        self.finish()

    def _release(self) -> None:
        if self._admitted:
            self._admitted = False
            self.site.gateway.release()

    def finish(self) -> None:
        self._release()
        super().finish()
        self.site.gateway.request_ended(self, self.code)

    def connectionLost(self, reason: Failure) -> None:
        self._release()
        abandoned = self.started is not None and not self.finished
        super().connectionLost(reason)
        if abandoned:
            self.site.gateway.request_ended(self, CLIENT_CLOSED)

    def processingFailed(self, reason: Failure) -> None:  # type: ignore[override]
        log.failure("unhandled error serving {path}", failure=reason,
                    path=self.path[:200])
        if not self.finished and not self._disconnected:
            write_error(self, 500, "internal error", close=True)


class GatewayChannel(CappedChannel):
    """HTTP/1.1 channel with a deadline for each request to arrive in full
    (headers and body: slowloris gets 408 and a closed connection), small
    limits on the request head (414, 431), JSON answers with a close for
    every request it refuses on the wire (Twisted's own is a bare 400), and
    that reports itself to the site for the connection cap. The idle
    keep-alive timeout is HTTPChannel's own ``timeOut``; its closes are
    counted, not logged."""

    MAX_LENGTH = MAX_LINE_BYTES
    totalHeadersSize = MAX_HEAD_BYTES
    maxHeaders = MAX_HEADERS
    _arrival_timer: IDelayedCall | None = None
    _arrived: float | None = None

    _host: Any = None

    def getHost(self) -> Any:
        """The local address, asked of the kernel once per connection (Twisted
        asks for every request it builds: a system call each)."""
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if self._arrival_timer is None and not self._handlingRequest:  # a new request
            gateway = self.site.gateway
            reason = gateway.shed_reason()
            if reason is not None and self._shed_unparsed(gateway, reason, data):
                return
            self._arrived = gateway.clock.seconds()
            self._arrival_timer = self.callLater(self.site.request_timeout, self._too_slow)
        super().dataReceived(data)

    def _shed_unparsed(self, gateway: Gateway, reason: str, data: bytes) -> bool:
        """Refuse a request that came whole in ``data`` without building a
        Request for it: under overload, clients that retry at once send
        these by the thousand, and a refusal must cost far less than an
        answer. False: not a sole whole request; parse it the long way."""
        request = sole_request(data)
        if request is None or self.transport.disconnecting:
            return False
        keep = request.keep_alive and reason != SHED_DRAINING
        self.resetTimeout()
        write_now(self.transport, SHED_ANSWERS[reason, keep])
        gateway.shed_on_arrival(request.path, reason)
        if not keep:
            self.persistent = False
            self.loseConnection()
        return True

    # An answer's head waits for its first body bytes, so that the two leave
    # in one send (see sendnow); an answer without a body sends it when done.
    _head: list[bytes] | None = None

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head.extend((name, b": ", value, b"\r\n"))
        head.append(b"\r\n")
        self._head = head

    def write(self, data: bytes) -> None:
        if self._head is not None:
            self._head.append(data)
            data = b"".join(self._head)
            self._head = None
        write_soon(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def requestDone(self, request: Request) -> None:
        if self._head is not None:
            self.write(b"")
        super().requestDone(request)

    def allContentReceived(self) -> None:
        self._stop_arrival_timer()
        if self.requests:  # the deadline counts from the request's first byte
            self.requests[-1].arrived = self._arrived
        self._arrived = None
        if not self.transport.disconnecting:  # else refused: nothing to serve
            super().allContentReceived()

    def _stop_arrival_timer(self) -> None:
        if self._arrival_timer is not None:
            if self._arrival_timer.active():
                self._arrival_timer.cancel()
            self._arrival_timer = None

    def _too_slow(self) -> None:
        self._arrival_timer = None
        self.refuse(408, "request not received in time")

    def refuse(self, code: int, message: str) -> None:
        """Answer ``code`` with a JSON error and close; nothing more is read."""
        if self.transport.disconnecting:
            return
        self._stop_arrival_timer()
        self.write(raw_error(code, message))
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's parser calls this for every request it cannot accept.
        if self._receivedHeaderCount > self.maxHeaders:
            self.refuse(431, f"more than {self.maxHeaders} request headers")
        elif self._receivedHeaderSize > self.totalHeadersSize:
            self.refuse(431, f"request head over {self.totalHeadersSize} bytes")
        else:
            self.refuse(400, "malformed HTTP request")

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.requests:  # a request exists once its request line is parsed
            self.refuse(431, f"request header line over {self.MAX_LENGTH} bytes")
        else:
            self.refuse(414, f"request line over {self.MAX_LENGTH} bytes")

    def allHeadersReceived(self) -> None:
        # RFC 9112 6.3: chunked must be the one and final coding, else the
        # body's length is ambiguous (Twisted takes the first header it
        # likes and ignores "identity"): 400 and close, never two requests.
        codings = self.requests[-1].requestHeaders.getRawHeaders(b"Transfer-Encoding")
        if codings is not None and (len(codings) > 1 or codings[0].lower() != b"chunked"):
            self.refuse(400, "Transfer-Encoding must be chunked alone")
            return
        super().allHeadersReceived()

    def _send100Continue(self) -> None:
        if not self.transport.disconnecting:  # not after a 413 for that body
            super()._send100Continue()

    def timeoutConnection(self) -> None:
        # Twisted's own, without its log line per connection (thousands of
        # idle keep-alive clients would flood the journal): counted instead.
        self.site.gateway.metrics.idle_closed()
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        # Twisted's own (the close stalled: abort), without its log line.
        self._abortingCall = None
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._stop_arrival_timer()
        super().connectionLost(reason)


class GatewaySite(CappedSite):
    """The public listener's site: serves the gateway's Klein app, with a cap
    on open client connections (``server.max_connections``, see conncap)."""

    protocol = GatewayChannel
    requestFactory = GatewayRequest
    displayTracebacks = False

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        server = gateway.snapshot.config.server
        kwargs.setdefault("timeout", server.idle_timeout_ms / 1000.0)
        kwargs.setdefault("parsePOSTFormSubmission", False)  # bodies are JSON, not forms
        super().__init__(gateway.app.resource(), **kwargs)
        self.gateway = gateway
        self.request_timeout = server.request_timeout_ms / 1000.0

    @property
    def max_connections(self) -> int:  # type: ignore[override]
        return self.gateway.snapshot.config.server.max_connections

    def log(self, request: Request) -> None:
        """No per-request line in the daemon's log (see the access log)."""
