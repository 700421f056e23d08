"""The admin face: a separate listener, loopback by default.

``/metrics`` (Prometheus text), ``/healthz`` (alive), ``/readyz`` (503
while starting or draining), and the debug views: ``/debug/inflight``,
``/debug/memory``, ``/debug/pool``, ``/debug/config``. None of it is served
on the public listener.

Its connections are bounded in number and in time, and it takes no body:
see :class:`AdminSite`, :class:`AdminChannel` and :class:`AdminRequest`.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from . import __version__, inflight, metrics
from .adminauth import CHALLENGE, UNAUTHORIZED, authorized
from .channel import BoundedChannel
from .configview import config_view
from .gateway import Gateway
from .memory import AllocationSites, memory_view
from .timers import cancel

ENDPOINTS = {
    "/metrics": "Prometheus metrics",
    "/healthz": "200 while the process runs",
    "/readyz": "200 when serving, 503 while starting or draining",
    "/debug/inflight": "requests in flight, oldest first (?limit=N, default 100, max 10000), "
                       "and tail samples running per partner",
    "/debug/memory": "RSS, gc, top object types (?types=N), tracemalloc sites",
    "/debug/pool": "partner connections per upstream: idle, active, opened, closed",
    "/debug/config": "the effective configuration, secrets redacted",
}


class BadParameter(ValueError):
    """A query parameter is malformed (answered with 400)."""


def _json(request: IRequest, document: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(document, indent=1).encode("utf-8") + b"\n"


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    raw = values[0]
    if not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise BadParameter(f"{name} must be an integer from {low} to {high}")
    return int(raw)


class Admin:
    """Health and introspection endpoints for operators."""

    app = Klein()

    def __init__(self, gateway: Gateway, sites: AllocationSites | None = None) -> None:
        self.gateway = gateway
        self.sites = sites

    @app.handle_errors(BadParameter)
    def bad_parameter(self, request: IRequest, failure: Any) -> bytes:
        return _json(request, {"error": str(failure.value)}, 400)

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Any) -> bytes:
        return _json(request, {"error": "no such admin page (GET / lists them)"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Any) -> bytes:
        request.setHeader(b"Allow", ", ".join(failure.value.valid_methods).encode("ascii"))
        return _json(request, {"error": "method not allowed: use GET"}, 405)

    @app.route("/", methods=["GET"])
    def index(self, request: Request) -> bytes:
        return _json(request, ENDPOINTS)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", metrics.CONTENT_TYPE.encode("ascii"))
        return self.gateway.metrics.exposition()

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        return _json(request, {"status": "ok", "inflight": self.gateway.admission.admitted,
                               "pid": os.getpid(), "version": __version__})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Request) -> bytes:
        """200 while serving; 503 while starting and once draining (SIGTERM),
        so that a load balancer stops sending before the listener closes."""
        g = self.gateway
        status = "draining" if g.admission.draining else "ready" if g.ready else "starting"
        return _json(request, {"status": status}, 200 if status == "ready" else 503)

    @app.route("/debug/inflight", methods=["GET"])
    def debug_inflight(self, request: Request) -> bytes:
        limit = _int_arg(request, "limit", inflight.DEFAULT_LIMIT, 1, inflight.MAX_LIMIT)
        g = self.gateway
        return _json(request, {"count": len(g.inflight),
                               "requests": inflight.oldest(g.inflight, g.clock.seconds(), limit),
                               "tail_samples": dict(sorted(g.upstream.tails.running.items()))})

    @app.route("/debug/memory", methods=["GET"])
    def debug_memory(self, request: Request) -> bytes:
        types = _int_arg(request, "types", 20, 1, 1000)
        return _json(request, memory_view(types, self.sites))

    @app.route("/debug/pool", methods=["GET"])
    def debug_pool(self, request: Request) -> bytes:
        upstream = self.gateway.upstream
        return _json(request, {
            "max_idle_per_upstream": upstream.pool.maxPersistentPerHost,
            "idle_timeout_s": upstream.pool.cachedConnectionTimeout,
            "upstreams": [row._asdict() for row in upstream.connections.view(upstream.pool)]})

    @app.route("/debug/config", methods=["GET"])
    def debug_config(self, request: Request) -> bytes:
        return _json(request, config_view(self.gateway.snapshot.config))


ADMIN_IDLE_TIMEOUT_S = 60
ADMIN_MAX_CONNECTIONS = 64
"""Open connections the admin face serves at once (scrapers and operators
need a few; a runaway client must not take the process's file descriptors).
See :class:`AdminSite` for what happens at the cap."""
ADMIN_MAX_BODY_BYTES = 4096
"""Every admin page is a GET: a request body past this gets 413 and a close
(in memory up to it, never spooled to a file)."""


class AdminRequest(Request):
    """An admin request: authorized (or refused with 401) as soon as its head
    is in, before any of its body is read; a body over
    :data:`ADMIN_MAX_BODY_BYTES` refused with 413; no ``Server`` header; a
    path or Host that is not UTF-8 refused with a JSON 400 (Klein would log
    a traceback for it)."""

    channel: "AdminChannel"
    _body_size = 0

    def gotLength(self, length: int | None) -> None:
        if not authorized(self, self.channel.site.token()):
            self._refuse(401, UNAUTHORIZED, CHALLENGE)
        elif length is not None and length > ADMIN_MAX_BODY_BYTES:
            self._refuse(413, f"admin requests take no body over {ADMIN_MAX_BODY_BYTES} bytes")
        else:
            self.content = io.BytesIO()  # Twisted would spool a big body to a file

    def handleContentChunk(self, data: bytes) -> None:
        if self.content is None:  # refused
            return
        self._body_size += len(data)
        if self._body_size > ADMIN_MAX_BODY_BYTES:
            self._refuse(413, f"admin requests take no body over {ADMIN_MAX_BODY_BYTES} bytes")
            return
        self.content.write(data)

    def _refuse(self, code: int, message: str, extra: bytes = b"") -> None:
        self.content = None
        self.channel.refuse(code, message, extra)

    def process(self) -> None:
        try:
            unquote_to_bytes(self.path).decode("utf-8")
            self.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            self.write(_json(self, {"error": "path and Host must be UTF-8"}, 400))
            self.finish()
            return
        super().process()

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name == b"Server":
            return  # Twisted names itself and its version: nothing a client needs
        super().setHeader(name, value)


class AdminChannel(BoundedChannel):
    """An admin connection: bounded in time (``server.request_timeout_ms``)
    and head size as on the public face (channel.py), and the site learns
    when it waits for a request and when it is answering one."""

    site: "AdminSite"
    _arrival_timer: IDelayedCall | None

    def __init__(self) -> None:
        super().__init__()
        self._arrival_timer = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.opened(self)

    def _arriving(self) -> bool:
        return self._arrival_timer is not None

    def _start_arrival_timer(self) -> None:
        self._arrival_timer = self.callLater(self.site.request_timeout(), self.too_slow)

    def _stop_arrival_timer(self) -> None:
        cancel(self._arrival_timer)
        self._arrival_timer = None

    def too_slow(self) -> None:
        self._arrival_timer = None
        super().too_slow()

    def allContentReceived(self) -> None:
        if not self.transport.disconnecting:  # else refused: nothing to serve
            self.site.answering(self)
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        self.site.waiting(self)  # before a pipelined request is read (in super)
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.site.closed(self)


class AdminSite(Site):
    """The admin face's site: no tracebacks, no log line per request, and at
    most :data:`ADMIN_MAX_CONNECTIONS` connections open.

    At the cap a newcomer is accepted in the place of the connection that
    has waited longest for a whole request (one still sending its head or
    body, or idle between requests): connections that send slowly or not at
    all cannot lock operators out, and an operator's request, sent at once,
    is answered. Only while every open connection is being answered is a
    newcomer closed at once."""

    # Twisted types it as its HTTP/2-or-1.1 wrapper; any HTTPChannel class serves.
    protocol = AdminChannel  # type: ignore[assignment]
    requestFactory = AdminRequest
    displayTracebacks = False
    max_connections = ADMIN_MAX_CONNECTIONS

    def __init__(self, resource: IResource, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.gateway = gateway
        self.connections: set[AdminChannel] = set()
        self._waiting: dict[AdminChannel, None] = {}  # insertion order: longest waiting first

    @property
    def open_connections(self) -> int:
        return len(self.connections)

    def token(self) -> str | None:
        return self.gateway.snapshot.config.server.admin_token

    def request_timeout(self) -> float:
        return self.gateway.snapshot.config.server.request_timeout_ms / 1000.0

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.connections) >= self.max_connections:
            if not self._waiting:
                return None  # Twisted closes it at once
            longest = next(iter(self._waiting))
            self.closed(longest)
            longest.transport.abortConnection()
        return super().buildProtocol(addr)

    def opened(self, channel: AdminChannel) -> None:
        self.connections.add(channel)
        self._waiting[channel] = None

    def answering(self, channel: AdminChannel) -> None:
        self._waiting.pop(channel, None)

    def waiting(self, channel: AdminChannel) -> None:
        if channel in self.connections:  # not one already dropped
            self._waiting[channel] = None

    def closed(self, channel: AdminChannel) -> None:
        self.connections.discard(channel)
        self._waiting.pop(channel, None)

    def log(self, request: http.Request) -> None:
        pass


def admin_site(gateway: Gateway, sites: AllocationSites | None = None,
               **kwargs: Any) -> AdminSite:
    kwargs.setdefault("timeout", ADMIN_IDLE_TIMEOUT_S)  # Twisted's default is 12 hours
    return AdminSite(Admin(gateway, sites).app.resource(), gateway, **kwargs)
