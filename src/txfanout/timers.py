"""Timers on the reactor: one pending call, a chain of them, loops.

``cancel`` drops a pending ``callLater`` (one that ran or was cancelled is
left alone). :class:`Chain` runs a tick again and again, each run scheduled
by the one before: unlike a ``LoopingCall`` (which keeps to a grid and skips
the ticks it missed), a run that comes late is simply late, ``due`` says by
how much, and each tick picks the delay to the next. :class:`Loops` are the
``LoopingCall`` s of one service, stopped together.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall


def cancel(call: IDelayedCall | None) -> None:
    """Cancel ``call`` if it is still pending."""
    if call is not None and call.active():
        call.cancel()


class Chain:
    """Calls ``tick()`` once ``start`` is called, and again each time the
    tick asks with ``next`` (which it does before or after its work, as its
    exceptions should or should not end the chain)."""

    def __init__(self, clock: IReactorTime, tick: Callable[[], None]) -> None:
        self._clock = clock
        self._tick = tick
        self._call: IDelayedCall | None = None
        self.due = 0.0  # when the pending (or running) tick was due

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self, delay: float) -> None:
        """Tick in ``delay`` seconds, unless already ticking."""
        if self._call is None:
            self.next(delay)

    def next(self, delay: float) -> None:
        """Tick again in ``delay`` seconds."""
        self.due = self._clock.seconds() + delay
        self._call = self._clock.callLater(delay, self._tick)

    def stop(self) -> None:
        """Stop ticking; ``start`` starts afresh."""
        cancel(self._call)
        self._call = None


class Loops:
    """``LoopingCall`` s on one clock, stopped together."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._loops: list[LoopingCall] = []

    def start(self, f: Callable[[], Any], interval: float, now: bool) -> None:
        """Call ``f`` every ``interval`` seconds (at once too when ``now``)."""
        loop = LoopingCall(f)
        loop.clock = self._clock
        loop.start(interval, now=now)
        self._loops.append(loop)

    def stop(self) -> None:
        """Stop every loop started."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
