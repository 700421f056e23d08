"""Who may use the admin face.

It listens on loopback unless configured otherwise. Listening anywhere else
needs ``server.admin_token`` (the configuration refuses it without one);
when a token is set, every admin request must carry
``Authorization: Bearer <token>``, compared in constant time, or gets 401.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Any, Callable

from twisted.internet.endpoints import _parse as parse_endpoint
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

# Where each endpoint type takes its interface when it is given positionally.
_INTERFACE_ARG = {"tcp": 2, "tcp6": 2, "ssl": 5}

UNAUTHORIZED = b'{"error": "admin bearer token required"}'


def listens_on_loopback(description: str) -> bool:
    """True when a server endpoint string (``tcp:9090:interface=127.0.0.1``)
    binds loopback only, or is a unix socket. No interface (all of them),
    another address, or an endpoint type whose address is not in the string
    (``systemd:``...) is not loopback."""
    try:
        args, kwargs = parse_endpoint(description)
    except Exception:
        return False
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return True
    index = _INTERFACE_ARG.get(kind)
    if index is None:
        return False
    interface = kwargs.get("interface", args[index] if len(args) > index else "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Does an ``Authorization`` header carry ``token``? Both sides are
    hashed first, so the comparison's time says nothing about the token,
    not even its length."""
    if header is None:
        return False
    scheme, _, offered = header.partition(b" ")
    same = hmac.compare_digest(hashlib.sha256(offered.strip()).digest(),
                               hashlib.sha256(token.encode("utf-8")).digest())
    return same and scheme.lower() == b"bearer"


class TokenGuard(Resource):
    """Wraps the admin resource; ``token()`` is read per request, so a
    reloaded configuration applies at once (None: no token required)."""

    isLeaf = True

    def __init__(self, wrapped: IResource, token: Callable[[], str | None]) -> None:
        super().__init__()
        self._wrapped = wrapped
        self._token = token

    def render(self, request: Request) -> Any:
        token = self._token()
        if token is not None and not bearer_matches(request.getHeader(b"Authorization"), token):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="txfanout-admin"')
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Content-Length", b"%d" % len(UNAUTHORIZED))
            return UNAUTHORIZED
        return self._wrapped.render(request)
