"""HTTP/1.1 hygiene both faces share (site.GatewayChannel, admin.AdminChannel).

Each request must arrive whole (head and body) within a deadline counted
from its first byte, else 408 and a close: dripping bytes does not keep a
connection open. The request head is bounded (414, 431). Every request a
channel refuses on the wire gets a JSON error and a close (Twisted's own is
a bare 400), and never a ``100 Continue`` for the body it refused.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from . import _twisted
from .wire import raw_error

# Limits on what a client may send before its request is routed.
MAX_LINE_BYTES = 8192      # request line, and each header line
MAX_HEAD_BYTES = 16384     # request line and all headers
MAX_HEADERS = 100


class BoundedChannel(HTTPChannel):
    """An HTTP/1.1 channel bounded in time and head size (see the module).
    A subclass keeps the deadline of the request arriving
    (``_start_arrival_timer``, ``_stop_arrival_timer``, ``_arriving``;
    ``too_slow`` when it comes), and may refuse a request by its first
    bytes (``request_begins``) and count refusals (``refused``)."""

    MAX_LENGTH = MAX_LINE_BYTES
    totalHeadersSize = MAX_HEAD_BYTES
    maxHeaders = MAX_HEADERS
    transport: Any  # TCP or TLS: disconnecting, abortConnection, pause/resumeProducing

    def request_begins(self, data: bytes) -> bool:
        """A new request begins with ``data``; False: it was refused, read
        none of it."""
        return True

    def refused(self, code: int) -> None:
        """A request was refused with ``code`` (called by ``refuse``)."""

    def dataReceived(self, data: bytes) -> None:
        if not self._arriving() and not _twisted.handling_request(self):
            if not self.request_begins(data):
                return
            self._start_arrival_timer()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_arrival_timer()
        if not self.transport.disconnecting:  # else refused: nothing to serve
            super().allContentReceived()

    def _arriving(self) -> bool:
        """Whether a request is arriving (its deadline runs)."""
        raise NotImplementedError

    def _start_arrival_timer(self) -> None:
        """A request begins: its deadline to arrive whole runs."""
        raise NotImplementedError

    def _stop_arrival_timer(self) -> None:
        """The request arrived whole, was refused, or its connection is
        gone (whether or not its deadline runs)."""
        raise NotImplementedError

    def too_slow(self) -> None:
        """The request did not arrive whole in time: 408."""
        self.refuse(408, "request not received in time")

    def refuse(self, code: int, message: str, extra: bytes = b"") -> None:
        """Answer ``code`` with a JSON error and close; nothing more is read.
        ``extra``: more header lines, each ending in CRLF."""
        if self.transport.disconnecting:
            return
        self._stop_arrival_timer()
        self.write(raw_error(code, message, extra=extra))
        self.loseConnection()
        self.refused(code)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's parser calls this for every request it cannot accept.
        if _twisted.header_count(self) > self.maxHeaders:
            self.refuse(431, f"more than {self.maxHeaders} request headers")
        elif _twisted.header_bytes(self) > self.totalHeadersSize:
            self.refuse(431, f"request head over {self.totalHeadersSize} bytes")
        else:
            self.refuse(400, "malformed HTTP request")

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.requests:  # a request exists once its request line is parsed
            self.refuse(431, f"request header line over {self.MAX_LENGTH} bytes")
        else:
            self.refuse(414, f"request line over {self.MAX_LENGTH} bytes")

    def _send100Continue(self) -> None:
        if not self.transport.disconnecting:  # not after a refusal (401, 413)
            super()._send100Continue()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_arrival_timer()
        super().connectionLost(reason)
