"""PyPy's old generation, collected by what it holds, not by the CPU's cache.

PyPy sizes its nursery from the cache size /proc/cpuinfo reports (half of
it) and starts no major collection before the heap reaches eight nurseries.
A server CPU that reports a 480 MB cache gets a 240 MB nursery and a 1.9 GB
floor: the old generation fills with garbage, about 2.5 KB per request at
fan-out 2, until RSS passes 1.4 GB, though what is alive after a collection
is some 40 MB. Nothing is leaked; it is simply never collected.

:class:`GcPacer` collects it by what it holds instead: every ``interval``
it reads the old generation's size (one call, well under a microsecond), and
once that has grown by ``budget`` bytes past what the last major collection
left alive, it runs a major collection, one incremental step per turn of
the reactor. CPython (no ``gc.collect_step``) needs none of this.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.internet.interfaces import IReactorTime

from .memory import pypy_gc_stats
from .timers import Chain

BUDGET = 96 * 1024 * 1024  # bytes of garbage let into the old generation
INTERVAL_S = 0.1

_collect_step: Any = getattr(gc, "collect_step", None)


def needed() -> bool:
    """Does this interpreter's collector need pacing (PyPy's does)?"""
    return _collect_step is not None and pypy_gc_stats is not None


def old_generation() -> int:
    """Bytes in PyPy's old generation (arenas and large objects)."""
    stats = pypy_gc_stats(False)
    return int(stats.total_arena_memory + stats.total_rawmalloced_memory)


class GcPacer:
    """Keeps PyPy's old generation within ``budget`` of its live data."""

    def __init__(self, clock: IReactorTime, budget: int = BUDGET,
                 interval: float = INTERVAL_S) -> None:
        self.budget = budget
        self.interval = interval
        self.live = 0  # the old generation after the last major collection
        self.collecting = False
        self.collections = 0
        self._chain = Chain(clock, self._tick)

    def start(self) -> None:
        if not self._chain.running and needed():
            self.live = old_generation()
            self._chain.start(self.interval)

    def stop(self) -> None:
        self._chain.stop()

    def _tick(self) -> None:
        if self.collecting or old_generation() > self.live + self.budget:
            self._step()
        self._chain.next(0.0 if self.collecting else self.interval)

    def _step(self) -> None:
        self.collecting = True
        result = _collect_step()
        if result.major_is_done:
            self.collecting = False
            self.collections += 1
            self.live = old_generation()
