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
    """The phase of one call and when it started (clock seconds)."""

    __slots__ = ("state", "started")

    def __init__(self, started: float) -> None:
        self.state = CONNECTING
        self.started = started
