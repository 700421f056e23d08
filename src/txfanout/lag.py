"""Reactor lag: how late the reactor runs a timer it was asked to run.

A blocked or saturated reactor runs every callback late; the lateness of a
timer scheduled every ``interval`` seconds measures it. ``ReactorLag.lag`` is
the latest measurement, in seconds (0.0 before the first one): read it from
metrics, from admission control, or from anything else that wants to know;
``watch`` is told of each one.

It is the gateway's own evidence of being behind: a timer it set itself,
run late by the work it had to do first. No client or partner can make it
late but by the work it makes the gateway do. ``busy``, the share of the
last interval the process spent on a CPU (its own CPU time), says whether
the core had anything to spare.

``behind`` is the lag less the time the process was paused by its own
collector (CPython's cyclic one, or PyPy's): how far behind the work
itself ran. A collection stalls the loop once, whatever is in flight, and
is over when the next turn runs: admission steers by ``behind``
(limit.py), so that a collection of 50 ms (a slow core, many connections
alive) neither cuts the in-flight limit nor holds it low. The breaker keeps ``recent``: a call that
timed out while the collector paused the loop is not the partner's doing.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from .timers import Chain


class ReactorLag:
    """Measures reactor lag every ``interval`` seconds once started.

    A chain of ``callLater`` (rather than a ``LoopingCall``, which silently
    skips the ticks it missed) so that each tick measures exactly how late
    it ran: ``lag = now - when it was due`` (timers.Chain).
    """

    def __init__(self, clock: IReactorTime, interval: float = 0.1, window: int = 5,
                 cpu: Callable[[], float] = time.process_time,
                 paused: Callable[[], float] = lambda: 0.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._clock = clock
        self.interval = interval
        self.lag = 0.0
        self.busy = 0.0
        self._cpu = cpu
        self._cpu_at = (clock.seconds(), cpu())
        # The worst of the last ``window`` measurements: a loop that is
        # saturated runs some turns short and some long, and one sample may
        # catch a short one.
        self.recent = 0.0
        self._recent: deque[float] = deque(maxlen=window)
        # ``paused()``: seconds the collector has paused the process in all
        self._paused = paused
        self._paused_at = paused()
        self.behind = 0.0  # the worst of the window, less the collector's pauses
        self._behind: deque[float] = deque(maxlen=window)
        self._chain = Chain(clock, self._tick)
        self._watchers: list[Callable[["ReactorLag"], None]] = []

    def watch(self, watcher: Callable[["ReactorLag"], None]) -> None:
        """Call ``watcher(self)`` after each measurement."""
        self._watchers.append(watcher)

    @property
    def running(self) -> bool:
        return self._chain.running

    def start(self) -> None:
        """Start measuring (idempotent)."""
        self._chain.start(self.interval)

    def stop(self) -> None:
        """Stop measuring; ``lag`` keeps its last value."""
        self._chain.stop()

    def _tick(self) -> None:
        now, cpu = self._clock.seconds(), self._cpu()
        then, cpu_then = self._cpu_at
        if now > then:
            self.busy = (cpu - cpu_then) / (now - then)
        self._cpu_at = (now, cpu)
        self.lag = max(0.0, now - self._chain.due)
        self._recent.append(self.lag)
        self.recent = max(self._recent)
        paused = self._paused()
        self._behind.append(max(0.0, self.lag - (paused - self._paused_at)))
        self._paused_at = paused
        self.behind = max(self._behind)
        self._chain.next(self.interval)
        for watcher in self._watchers:
            watcher(self)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<ReactorLag lag={self.lag:.4f}s interval={self.interval}s>"

