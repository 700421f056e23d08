"""The admin face: a separate listener, loopback by default."""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.web.server import Request, Site

from .adminauth import TokenGuard
from .gateway import Gateway


class Admin:
    """Health and introspection endpoints for operators."""

    app = Klein()

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"status": "ok", "inflight": self.gateway.admitted}).encode()


def admin_site(gateway: Gateway, **kwargs: Any) -> Site:
    resource = TokenGuard(Admin(gateway).app.resource(),
                          lambda: gateway.snapshot.config.server.admin_token)
    site = Site(resource, **kwargs)
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
