"""Where one partner call is, for the live in-flight view.

A call starts ``connecting`` (waiting for a pooled or new connection), is
``sent`` once its request is written, ``reading`` once the response headers
are in; its end is the call's outcome (``done:<outcome>``, from the result).
A selected partner whose call has not started yet is ``waiting-slot``.
"""

from __future__ import annotations

WAITING_SLOT = "waiting-slot"
CONNECTING = "connecting"
SENT = "sent"
READING = "reading"


class CallPhase:
    """The phase of one call, when it started (clock seconds) and the
    timeout it was given (ms: its partner's, cut by the request's deadline,
    or shortened by ``adaptive_timeout``)."""

    __slots__ = ("state", "started", "timeout_ms")

    def __init__(self, started: float, timeout_ms: float = 0.0) -> None:
        self.state = CONNECTING
        self.started = started
        self.timeout_ms = timeout_ms
