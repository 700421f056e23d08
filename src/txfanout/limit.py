"""The in-flight limit: ``max_inflight``, lowered while the gateway itself
makes answers late.

A gateway that keeps up reads its partners' answers as they come and
answers within the deadline. One that has taken on more than its core can
serve does neither: partners' answers wait unread in its sockets until their
calls time out, or its answers leave after the deadline. Such a request cuts
the limit by a quarter (at most once per ``CUT_EVERY`` seconds, about the
time a cut takes to show); each request answered in time raises it by
``1/limit``, about one per round of requests, back up to ``max_inflight``.
Additive increase, multiplicative decrease: how TCP finds what a path
carries.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

CUT = 0.75
CUT_EVERY = 0.25  # seconds
FLOOR = 8


class InflightLimit:
    """How many requests may be in flight now (``current``)."""

    __slots__ = ("_clock", "_adaptive", "ceiling", "value", "_next_cut")

    def __init__(self, clock: IReactorTime, ceiling: int, adaptive: bool = True) -> None:
        self._clock = clock
        self._next_cut = 0.0
        self.value = float(ceiling)
        self.configure(ceiling, adaptive)

    def configure(self, ceiling: int, adaptive: bool) -> None:
        """A new ``max_inflight`` (and whether to adapt below it)."""
        self.ceiling = ceiling
        self._adaptive = adaptive
        self.value = float(ceiling) if not adaptive else min(self.value, float(ceiling))

    @property
    def current(self) -> int:
        return int(self.value)

    def answered_in_time(self) -> None:
        value = self.value
        if value < self.ceiling:
            self.value = min(float(self.ceiling), value + 1.0 / value)

    def answered_late(self) -> None:
        """A request the gateway made late (see the module's docstring)."""
        if not self._adaptive:
            return
        now = self._clock.seconds()
        if now >= self._next_cut:
            self.value = max(float(min(FLOOR, self.ceiling)), self.value * CUT)
            self._next_cut = now + CUT_EVERY
