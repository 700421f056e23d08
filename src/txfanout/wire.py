"""Answers made on the wire, before or instead of a routed request.

``raw_error`` builds a whole HTTP/1.1 error answer (both faces' refusals on
the wire, channel.py); ``SHED_ANSWERS`` are the
503s, prepared once (``SHED_HEADS`` the same without their body, for HEAD:
on a kept-alive connection a body would be read as the start of the next
answer); ``sole_request`` tells whether a chunk of bytes is
exactly one complete, plainly framed request, so that an overloaded gateway
can refuse it without parsing it into a Request.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from .admission import (
    RETRY_AFTER_S,
    SHED_BACKLOG,
    SHED_DRAINING,
    SHED_MAX_INFLIGHT,
    SHED_PARTNERS_UNAVAILABLE,
    SHED_REACTOR_LAG,
)

_REASONS = {400: b"Bad Request", 401: b"Unauthorized", 408: b"Request Timeout",
            413: b"Payload Too Large", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}

SHED_MESSAGES = {
    SHED_MAX_INFLIGHT: "gateway at its in-flight limit; retry later",
    SHED_REACTOR_LAG: "gateway overloaded (event loop behind); retry later",
    SHED_DRAINING: "gateway is shutting down; retry",
    SHED_BACKLOG: "request waited out its deadline before the gateway could read it; "
                  "retry later",
    SHED_PARTNERS_UNAVAILABLE: "no partner of this request can be called now (each at "
                               "its max_concurrency or its circuit open); retry later",
}
RETRY_AFTER = b"%d" % RETRY_AFTER_S


def raw_error(code: int, message: str, close: bool = True, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 error answer (announcing the connection's close, by
    default). ``extra``: more header lines, each ending in CRLF."""
    body = json.dumps({"error": message}).encode("utf-8")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s%s"
            b"Content-Length: %d\r\n\r\n%s"
            % (code, _REASONS[code], b"Connection: close\r\n" if close else b"", extra,
               len(body), body))


#: (shed reason, keep the connection open) -> the whole 503 answer.
SHED_ANSWERS = {(reason, keep): raw_error(503, message, close=not keep,
                                          extra=b"Retry-After: %s\r\n" % RETRY_AFTER)
                for reason, message in SHED_MESSAGES.items() for keep in (True, False)}
#: The same, for HEAD: the head alone (its Content-Length that of the body).
SHED_HEADS = {key: answer[:answer.index(b"\r\n\r\n") + 4] for key, answer in SHED_ANSWERS.items()}

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,10})[ \t]*\r\n")


class SoleRequest(NamedTuple):
    path: bytes
    keep_alive: bool  # HTTP/1.1 without a Connection header
    head: bool = False  # a HEAD: its answer has no body


def sole_request(data: bytes) -> SoleRequest | None:
    """``data`` as one whole request, if it is exactly that: a request line,
    headers, and a body whose length one Content-Length gives (or none), with
    nothing after it. Anything else (a partial or pipelined request, chunked
    or ambiguous framing, an odd request line) is None: parse it the long way.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    line_end = data.find(b"\r\n")
    parts = data[:line_end].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    head = data[line_end:end + 2].lower()
    if b"\r\ntransfer-encoding:" in head:
        return None
    length = 0
    headers = head.count(b"\r\ncontent-length:")
    if headers:
        match = _CONTENT_LENGTH.search(head)
        if headers > 1 or match is None:
            return None
        length = int(match.group(1))
    if len(data) != end + 4 + length:
        return None
    return SoleRequest(parts[1], parts[2] == b"HTTP/1.1" and b"\r\nconnection:" not in head,
                       parts[0] == b"HEAD")
