"""Answer: the JSON a client receives, the fan-out's results or an error.

Every answer has a ``Content-Length`` (Klein would send bytes chunked) and
``Content-Type: application/json``; errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from typing import Sequence

from twisted.web.server import Request

from . import outcomes
from .inbound import Inbound
from .outcomes import CallResult

_COMPLETE = frozenset((outcomes.OK, outcomes.HTTP_ERROR))


def is_complete(results: Sequence[CallResult]) -> bool:
    """Did every selected partner answer (``ok`` or ``http_error``)?"""
    return all(r.outcome in _COMPLETE for r in results)


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


def results(request: Request, inbound: Inbound, calls: Sequence[CallResult],
            elapsed: float, complete: bool) -> bytes:
    """The 200 answer: one entry per selected partner, and whether every
    one of them answered (``is_complete``)."""
    request.setHeader(b"X-Request-Id", inbound.request_id.encode("ascii"))
    request.setHeader(b"X-Fanout-Complete", b"true" if complete else b"false")
    return json_body(request, json.dumps({
        "request_id": inbound.request_id, "route": inbound.route, "complete": complete,
        "elapsed_ms": round(elapsed * 1000.0, 1),
        "results": [r.to_json() for r in calls],
    }).encode("utf-8"))
