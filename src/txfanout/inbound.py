"""Parse: one admitted request, checked and understood.

:func:`parse` turns a routed POST into an :class:`Inbound` (its body, the
country and OS that select its partners, its budget, its request id) or
refuses it with :class:`Refused` (405 for another method, 400 for a body
that is not JSON, a malformed country, OS or deadline header).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from twisted.web.http_headers import Headers

from ._compat import SLOTS
from .budget import BadDeadline, Budget, deadline_ms
from .snapshot import Snapshot
from .strictjson import decode_json  # inbound.decode_json: partner answers use it too
from .targeting import BadTargeting

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class Refused(Exception):
    """The request cannot be served as sent: ``code`` and ``message`` for
    the client (``allow``: the methods a 405 names)."""

    def __init__(self, code: int, message: str, allow: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.allow = allow


@dataclass(**SLOTS)
class Inbound:
    """One request, as the gateway understood it."""

    route: str
    request_id: str
    body: bytes
    country: str | None
    os: str
    budget: Budget


class RequestIds:
    """The client's ``X-Request-Id`` when it is 1-64 characters of letters,
    digits and ``._:-``; else a new one, unique per process."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = 0

    def of(self, headers: Headers) -> str:
        given = headers.getRawHeaders(b"X-Request-Id")
        if given is not None and _REQUEST_ID.match(given[-1]):
            return given[-1].decode("ascii")
        self._counter += 1
        return f"{self._prefix}-{self._counter:x}"


def parse(snapshot: Snapshot, route: str, method: bytes, headers: Headers, body: bytes,
          started: float, ids: RequestIds) -> Inbound:
    """The request to ``route``, understood; :class:`Refused` when it cannot be."""
    if method != b"POST":
        raise Refused(405, "use POST", allow=b"POST")
    try:
        document = decode_json(body)
    except ValueError:
        raise Refused(400, "body is not valid JSON") from None
    try:
        country, os_name = snapshot.targeting.resolve(headers, document)
        ms = deadline_ms(headers.getRawHeaders(snapshot.deadline_header, [None])[-1],
                         snapshot.config.server)
    except (BadTargeting, BadDeadline) as e:
        raise Refused(400, str(e)) from None
    return Inbound(route, ids.of(headers), body, country, os_name,
                   Budget.of(started, ms, snapshot.config.server))
