"""What the leak tests count: live objects by type, and our pending timers
on the global reactor (see tests/test_leaks.py for why each is left out)."""

from __future__ import annotations

import gc
import heapq
from collections import Counter
from types import MethodType
from typing import Any

from twisted.internet import reactor
from twisted.internet.base import DelayedCall

ATOMS = (int, float, str, bytes)  # never tracked by CPython's collector


def counted(o: Any) -> bool:
    if isinstance(o, ATOMS):
        return False
    if isinstance(o, DelayedCall):
        return not o.cancelled
    return not (isinstance(o, MethodType) and o.__self__ is reactor)


def live_objects() -> Counter[str]:
    drop_cancelled_timers()
    gc.collect()
    return Counter((f"method {o.__func__.__qualname__}" if type(o).__name__ == "method"
                    else f"{type(o).__module__}.{type(o).__qualname__}")
                   for o in gc.get_objects() if counted(o))


def grown(snapshots: list[Counter[str]], noise: int) -> dict[str, list[int]]:
    """The types that gained more than ``noise`` objects over the snapshots
    after the first (which warms caches up), and a share of it from each to
    the next, with what each step gained. A leak grows with every cycle; a
    one-off gain does not (on PyPy, a trace the JIT compiles can keep a few
    dozen objects it was compiled with: a closure's cells, say)."""
    steady = snapshots[1:]
    steps = len(steady) - 1
    gains = {t: [after[t] - before[t] for before, after in zip(steady, steady[1:])]
             for t in steady[-1]}
    return {t: g for t, g in gains.items()
            if sum(g) > noise and all(step > noise / steps for step in g)}


def drop_cancelled_timers() -> None:
    """Purge cancelled timers from the reactor's heap now. The reactor does it
    lazily, once more than 50 (and half the heap) are cancelled; until then
    each keeps a DelayedCall and two bound methods alive, a noise of up to
    ~150 objects between otherwise identical snapshots."""
    reactor._pendingTimedCalls = [c for c in reactor._pendingTimedCalls if not c.cancelled]
    heapq.heapify(reactor._pendingTimedCalls)
    reactor._cancellations = sum(1 for c in reactor._newTimedCalls if c.cancelled)


def our_pending_timers() -> list[str]:
    return [repr(c) for c in reactor.getDelayedCalls()
            if getattr(c.func, "__module__", "").startswith("txfanout")]
