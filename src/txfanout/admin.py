"""The admin face: a separate listener, loopback by default."""

from __future__ import annotations

import json
import os
from typing import Any

from klein import Klein
from twisted.web.server import Request, Site

from .gateway import Gateway


class Admin:
    """Health and introspection endpoints for operators."""

    app = Klein()

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"status": "ok", "inflight": self.gateway.admitted,
                           "pid": os.getpid()}).encode()

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Request) -> bytes:
        """200 while serving; 503 once draining (SIGTERM), so that a load
        balancer stops sending before the listener closes."""
        request.setHeader(b"Content-Type", b"application/json")
        if self.gateway.draining:
            request.setResponseCode(503)
            return b'{"status": "draining"}'
        return b'{"status": "ready"}'


def admin_site(gateway: Gateway, **kwargs: Any) -> Site:
    site = Site(Admin(gateway).app.resource(), **kwargs)
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
