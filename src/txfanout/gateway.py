"""The public face: admission, parsing, targeting, fan-out, the answer.

``Gateway`` holds the live state (config snapshot, partner states, the pool,
requests in flight) and the Klein app; ``GatewaySite`` serves it with a
request class that refuses over-limit requests and oversized bodies before
anything else is spent on them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from . import outcomes
from .accesslog import AccessLog
from .config import Config
from .fanout import Fanout, PartnerState
from .inflight import OverdueWatch
from .lag import ReactorLag
from .metrics import CLIENT_CLOSED, SHED_MAX_INFLIGHT, UNKNOWN_ROUTE, GatewayMetrics
from .outcomes import CallResult
from .targeting import BadTargeting, Selector, json_field, os_from_user_agent, parse_country, parse_os
from .upstream import Upstream

log = Logger()

_ROUTE_PATH = re.compile(rb"^/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_COMPLETE = frozenset((outcomes.OK, outcomes.HTTP_ERROR))


def json_error(request: Request, code: int, message: str) -> bytes:
    """Set ``code`` and return the JSON error body ``{"error": message}``."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message}).encode("utf-8")


def write_error(request: Request, code: int, message: str, close: bool = False,
                headers: dict[bytes, bytes] | None = None) -> None:
    """Answer ``request`` at once with a JSON error (outside Klein)."""
    body = json_error(request, code, message)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if close:
        request.setHeader(b"Connection", b"close")
    request.setHeader(b"Content-Length", b"%d" % len(body))
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


def compile_snapshot(config: Config) -> Snapshot:
    t = config.targeting
    return Snapshot(
        config=config, selector=Selector(config),
        partners={name: PartnerState(p) for name, p in config.partners.items()},
        country_header=t.country_header.encode("ascii"),
        country_path=tuple(t.country_field.split(".")),
        os_header=t.os_header.encode("ascii"), os_path=tuple(t.os_field.split(".")),
        deadline_header=config.server.deadline_header.encode("ascii"),
        route_labels={b"/" + name.encode("ascii"): name for name in config.routes})


def pool_size_per_host(config: Config) -> int:
    """Idle connections to keep per upstream host: the sum of the caps of the
    partners on that host (the pool keys by scheme, host and port)."""
    per_host: dict[tuple[str, str, int | None], int] = {}
    for p in config.partners.values():
        u = urlsplit(p.url)
        key = (u.scheme, u.hostname or "", u.port)
        per_host[key] = per_host.get(key, 0) + p.max_concurrency
    return max(per_host.values(), default=2)


class Gateway:
    """The fan-out gateway: live state and its Klein app."""

    app = Klein()

    def __init__(self, reactor: Any, config: Config) -> None:
        self.clock = reactor
        self.snapshot = compile_snapshot(config)
        self.upstream = Upstream(reactor, pool_size_per_host(config),
                                 config.upstream.idle_timeout_ms / 1000.0)
        self.inflight: set[Fanout] = set()
        self.admitted = 0
        self.ready = False  # /readyz: False while starting and draining
        self.lag = ReactorLag(reactor)  # started by the daemon (tap.py)
        self.overdue = OverdueWatch(reactor, self.inflight)
        self.metrics = GatewayMetrics(self)
        self.access_log: AccessLog | None = None
        self._id_prefix = os.urandom(4).hex()
        self._id_counter = 0

    # -- admission (called by GatewayRequest before any parsing) --

    def admit(self) -> bool:
        if self.admitted >= self.snapshot.config.server.max_inflight:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

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
            complete = all(r.outcome in _COMPLETE for r in results)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"X-Request-Id", request_id.encode("ascii"))
            request.setHeader(b"X-Fanout-Complete", b"true" if complete else b"false")
            return json.dumps({
                "request_id": request_id, "route": route, "complete": complete,
                "elapsed_ms": round((self.clock.seconds() - started) * 1000.0, 1),
                "results": [r.to_json() for r in results],
            }).encode("utf-8")

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

    def close(self) -> Any:
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
    started: float | None = None  # set when processing starts
    fanout: Fanout | None = None

    def _gateway(self) -> Gateway:
        return self.channel.site.gateway  # type: ignore[no-any-return]

    def gotLength(self, length: int | None) -> None:
        limit = self._gateway().snapshot.config.server.max_body_bytes
        if length is not None and length > limit:
            self._refuse_body(limit)
            return
        super().gotLength(length)

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
        body = json.dumps({"error": f"body over {limit} bytes"}).encode("utf-8")
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.loseConnection()
        self._gateway().request_ended(self, 413)

    def process(self) -> None:
        if self._refused:
            return
        self.site = self.channel.site
        self.started = self.site.gateway.clock.seconds()
        if not self.site.gateway.admit():
            self.site.gateway.metrics.shed(SHED_MAX_INFLIGHT)
            self.setHeader(b"Retry-After", b"1")
            write_error(self, 503, "gateway at max_inflight; retry later")
            return
        self._admitted = True
        super().process()

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


class GatewaySite(Site):
    """The public listener's site: serves the gateway's Klein app."""

    requestFactory = GatewayRequest
    displayTracebacks = False

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(gateway.app.resource(), **kwargs)
        self.gateway = gateway

    def log(self, request: Request) -> None:
        """No per-request line in the daemon's log (see the access log)."""
