"""Who may use the admin face.

It listens on loopback unless configured otherwise. Listening anywhere else
needs ``server.admin_token`` (the configuration refuses it without one);
when a token is set, every admin request must carry
``Authorization: Bearer <token>``, compared in constant time, or gets 401
(see admin.AdminRequest: before any of its body is read).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from twisted.web.server import Request

from . import _twisted

# Where each endpoint type takes its interface when it is given positionally.
_INTERFACE_ARG = {"tcp": 2, "tcp6": 2, "ssl": 5}

UNAUTHORIZED = "admin bearer token required"
CHALLENGE = b'WWW-Authenticate: Bearer realm="txfanout-admin"\r\n'


def listens_on_loopback(description: str) -> bool:
    """True when a server endpoint string (``tcp:9090:interface=127.0.0.1``)
    binds loopback only, or is a unix socket. No interface (all of them),
    another address, or an endpoint type whose address is not in the string
    (``systemd:``...) is not loopback."""
    try:
        args, kwargs = _twisted.parse_endpoint(description)
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


def authorized(request: Request, token: str | None) -> bool:
    """May ``request`` use the admin face? (``token`` None: no token needed.)"""
    return token is None or bearer_matches(request.getHeader(b"Authorization"), token)
