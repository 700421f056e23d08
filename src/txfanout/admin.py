"""The admin face: a separate listener, loopback by default.

``/metrics`` (Prometheus text), ``/healthz`` (alive), ``/readyz`` (503
while starting or draining), and the debug views: ``/debug/inflight``,
``/debug/memory``, ``/debug/pool``, ``/debug/config``. None of it is served
on the public listener.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.web.server import Request, Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from . import inflight, metrics
from .configview import config_view
from .adminauth import TokenGuard
from .conncap import CappedSite
from .gateway import Gateway
from .memory import AllocationSites, memory_view

ENDPOINTS = {
    "/metrics": "Prometheus metrics",
    "/healthz": "200 while the process runs",
    "/readyz": "200 when serving, 503 while starting or draining",
    "/debug/inflight": "requests in flight, oldest first (?limit=N, default 100, max 10000)",
    "/debug/memory": "RSS, gc, top object types (?types=N), tracemalloc sites",
    "/debug/pool": "partner connections per upstream: idle, active, opened, closed",
    "/debug/config": "the effective configuration, secrets redacted",
}


class BadParameter(ValueError):
    """A query parameter is malformed (answered with 400)."""


def _json(request: Request, document: Any, code: int = 200) -> bytes:
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
    def bad_parameter(self, request: Request, failure: Any) -> bytes:
        return _json(request, {"error": str(failure.value)}, 400)

    @app.handle_errors(NotFound)
    def not_found(self, request: Request, failure: Any) -> bytes:
        return _json(request, {"error": "no such admin page (GET / lists them)"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: Request, failure: Any) -> bytes:
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
        return _json(request, {"status": "ok", "inflight": self.gateway.admitted,
                               "pid": os.getpid()})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Request) -> bytes:
        """200 while serving; 503 while starting and once draining (SIGTERM),
        so that a load balancer stops sending before the listener closes."""
        g = self.gateway
        status = "draining" if g.draining else "ready" if g.ready else "starting"
        return _json(request, {"status": status}, 200 if status == "ready" else 503)

    @app.route("/debug/inflight", methods=["GET"])
    def debug_inflight(self, request: Request) -> bytes:
        limit = _int_arg(request, "limit", inflight.DEFAULT_LIMIT, 1, inflight.MAX_LIMIT)
        g = self.gateway
        return _json(request, {"count": len(g.inflight),
                               "requests": inflight.oldest(g.inflight, g.clock.seconds(), limit)})

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
            "upstreams": upstream.connections.view(upstream.pool)})

    @app.route("/debug/config", methods=["GET"])
    def debug_config(self, request: Request) -> bytes:
        return _json(request, config_view(self.gateway.snapshot.config))


ADMIN_IDLE_TIMEOUT_S = 60
ADMIN_MAX_CONNECTIONS = 64
"""Open connections the admin face serves at once; more wait in the kernel's
backlog (scrapers and operators need a few; a runaway client must not take
the process's file descriptors)."""


class AdminRequest(Request):
    """An admin request: no ``Server`` header; a path or Host that is not
    UTF-8 refused with a JSON 400 (Klein would log a traceback for it)."""

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


class AdminSite(CappedSite):
    """The admin face's site: no tracebacks, no log line per request, at most
    :data:`ADMIN_MAX_CONNECTIONS` connections open."""

    requestFactory = AdminRequest
    displayTracebacks = False
    max_connections = ADMIN_MAX_CONNECTIONS

    def log(self, request: Request) -> None:
        pass


def admin_site(gateway: Gateway, sites: AllocationSites | None = None, **kwargs: Any) -> Site:
    resource = TokenGuard(Admin(gateway, sites).app.resource(),
                          lambda: gateway.snapshot.config.server.admin_token)
    kwargs.setdefault("timeout", ADMIN_IDLE_TIMEOUT_S)  # Twisted's default is 12 hours
    return AdminSite(resource, **kwargs)
