"""Reactor lag: how late the event loop runs a timer it was asked to run.

A loop that is busy past its capacity runs timers late; that lateness is the
earliest honest sign of overload, before queues and memory grow.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class ReactorLag:
    """Re-arms a timer every ``interval`` seconds; ``lag`` is how late the
    last one fired (seconds, never negative)."""

    def __init__(self, clock: IReactorTime, interval: float = 0.05) -> None:
        self._clock = clock
        self._interval = interval
        self._expected = 0.0
        self._call: IDelayedCall | None = None
        self.lag = 0.0

    def start(self) -> None:
        if self._call is None:
            self._arm()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.lag = 0.0

    def _arm(self) -> None:
        self._expected = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        self.lag = max(0.0, self._clock.seconds() - self._expected)
        self._arm()
