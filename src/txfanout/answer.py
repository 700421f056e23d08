"""Answer: the JSON a client receives, the fan-out's results or an error.

Every answer has a ``Content-Length`` (Klein would send bytes chunked) and
``Content-Type: application/json``; errors are ``{"error": "..."}``. The
results are UTF-8 JSON with characters unescaped (``\\uXXXX`` would make a
body of bytes that are not UTF-8, each one U+FFFD, six times its size
rather than three), and at most ``server.max_answer_bytes``: partner bodies
that would pass it are left out, largest first.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from twisted.web.server import Request

from . import outcomes
from .inbound import Inbound
from .outcomes import CallResult

_COMPLETE = frozenset((outcomes.OK, outcomes.HTTP_ERROR))
_RESULTS_JSON = json.JSONEncoder(ensure_ascii=False)
# What one character of a body can take, JSON-encoded (\u001f), and all of an
# entry but its body (a name, an error text and numbers); the request id and
# route take less. Together they bound an answer's size before it is built.
MAX_CHAR_BYTES = 6
ENTRY_BYTES = 512


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
            elapsed: float, max_bytes: int) -> tuple[bytes, bool]:
    """The 200 answer, at most ``max_bytes``: one entry per selected
    partner, and whether every one of them answered and its body is in
    (also returned)."""
    entries = [r.to_json() for r in calls]
    left_out = leave_out_bodies(entries, max_bytes)
    complete = not left_out and is_complete(calls)
    request.setHeader(b"X-Request-Id", inbound.request_id.encode("ascii"))
    request.setHeader(b"X-Fanout-Complete", b"true" if complete else b"false")
    return json_body(request, _RESULTS_JSON.encode({
        "request_id": inbound.request_id, "route": inbound.route, "complete": complete,
        "elapsed_ms": round(elapsed * 1000.0, 1), "results": entries,
    }).encode("utf-8")), complete


def leave_out_bodies(entries: list[dict[str, Any]], max_bytes: int) -> bool:
    """Leave out the largest bodies (``body`` null, an ``error`` saying why)
    until the answer fits in ``max_bytes``; True when any was left out."""
    overhead = ENTRY_BYTES * (len(entries) + 1)
    if overhead + MAX_CHAR_BYTES * sum(len(e["body"] or "") for e in entries) <= max_bytes:
        return False  # fits, whatever the bodies hold: the usual case, and cheap
    sizes = {i: len(_RESULTS_JSON.encode(e["body"]).encode("utf-8"))
             for i, e in enumerate(entries) if e["body"] is not None}
    total = overhead + sum(sizes.values())
    left_out = False
    for i in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= max_bytes:
            break
        total -= sizes[i]
        entries[i]["body"] = None
        entries[i]["error"] = f"body left out: answer over {max_bytes} bytes"
        left_out = True
    return left_out
