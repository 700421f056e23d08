"""Where memory goes: RSS, the collector, object types, allocation sites.

Allocation sites need ``tracemalloc``, which slows every allocation down:
it only runs when the daemon was started with ``--tracemalloc N``. PyPy has
no ``tracemalloc`` and none of CPython's generation counters: those parts of
the view are then absent or ``None``.
Counting object types walks every object the collector tracks (tens of
milliseconds on a large heap, the reactor waits): for operators, not for
scrapers.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from collections import Counter
from time import perf_counter
from typing import Any

try:
    import tracemalloc
except ImportError:  # PyPy
    TRACEMALLOC = False
else:
    TRACEMALLOC = True

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# PyPy's collector statistics (``gc._get_stats``); None on CPython.
pypy_gc_stats: Any = getattr(gc, "_get_stats", None)


def rss_bytes() -> int:
    """The resident set size now (Linux), else the peak one."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _type_name(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def top_types(objects: list[Any], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most numerous types among ``objects``."""
    counts = Counter(type(o) for o in objects)
    return [{"type": _type_name(t), "count": n} for t, n in counts.most_common(limit)]


def _short(filename: str) -> str:
    """``twisted/web/http.py`` rather than its full site-packages path."""
    best = ""
    for entry in sys.path:
        if entry and filename.startswith(entry.rstrip("/") + "/") and len(entry) > len(best):
            best = entry.rstrip("/") + "/"
    return filename[len(best):]


class AllocationSites:
    """Top allocation sites from tracemalloc, and how they moved since the
    previous report (only the per-site totals are kept between reports)."""

    def __init__(self, top: int, frames: int = 1) -> None:
        if not TRACEMALLOC:
            raise RuntimeError("tracemalloc is not available on this interpreter")
        self._filters = (tracemalloc.Filter(False, tracemalloc.__file__),
                         tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
                         tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
                         tracemalloc.Filter(False, "<unknown>"),
                         tracemalloc.Filter(False, __file__))  # our own previous report
        self.top = top
        self._frames = frames
        self._previous: dict[str, tuple[int, int]] | None = None

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self._frames)

    def stop(self) -> None:
        tracemalloc.stop()
        self._previous = None

    def report(self) -> dict[str, Any]:
        """Top sites by size now, and the top changes since the last report."""
        if not tracemalloc.is_tracing():
            return {"enabled": False}
        snapshot = tracemalloc.take_snapshot().filter_traces(self._filters)
        now: dict[str, tuple[int, int]] = {}
        for stat in snapshot.statistics("lineno"):
            frame = stat.traceback[0]
            now[f"{_short(frame.filename)}:{frame.lineno}"] = (stat.size, stat.count)
        previous, self._previous = self._previous, now
        top = sorted(now.items(), key=lambda kv: kv[1][0], reverse=True)[:self.top]
        current, peak = tracemalloc.get_traced_memory()
        out: dict[str, Any] = {
            "enabled": True, "traced_bytes": current, "traced_peak_bytes": peak,
            "top": [{"site": site, "size_bytes": size, "count": count}
                    for site, (size, count) in top],
            "diff": None,
        }
        if previous is not None:
            changes: list[dict[str, Any]] = []
            for site in now.keys() | previous.keys():
                size, count = now.get(site, (0, 0))
                old_size, old_count = previous.get(site, (0, 0))
                if size != old_size or count != old_count:
                    changes.append({"site": site, "size_bytes": size,
                                    "size_diff": size - old_size, "count_diff": count - old_count})
            changes.sort(key=lambda c: abs(c["size_diff"]), reverse=True)
            out["diff"] = changes[:self.top]
        return out


def memory_view(types: int, sites: AllocationSites | None) -> dict[str, Any]:
    """The /debug/memory document."""
    objects = gc.get_objects()
    top, tracked = top_types(objects, types), len(objects)
    del objects  # a list of every object: not kept while the answer is built
    return {
        "rss_bytes": rss_bytes(),
        "gc": {**_generations(), "tracked_objects": tracked},
        "top_types": top,
        "tracemalloc": sites.report() if sites is not None else
        {"enabled": False, "hint": "start the daemon with --tracemalloc N" if TRACEMALLOC
         else "tracemalloc is not available on this interpreter"},
    }


_collector_seconds = [0.0, 0.0, 0.0]  # by generation, since _timed went in
_collection_started = 0.0


def _timed(phase: str, info: dict[str, Any]) -> None:
    global _collection_started
    if phase == "start":
        _collection_started = perf_counter()
    else:
        _collector_seconds[info["generation"]] += perf_counter() - _collection_started


def collector_seconds() -> list[float] | None:
    """Seconds CPython's cyclic collector has spent in each generation
    since this was first asked (a ``gc.callbacks`` hook, one per process);
    None on PyPy, which has no such hook (its major collections are paced
    by gcpacer.py)."""
    callbacks = getattr(gc, "callbacks", None)
    if callbacks is None:
        return None
    if _timed not in callbacks:
        callbacks.append(_timed)
    return list(_collector_seconds)


def collector_pauses() -> float:
    """Seconds the collector has paused the process: CPython's cyclic
    collector (see ``collector_seconds``), or PyPy's, minor and major (its
    own count, ``total_gc_time``, in milliseconds)."""
    seconds = collector_seconds()
    if seconds is not None:
        return sum(seconds)
    return pypy_gc_stats(False).total_gc_time / 1000.0 if pypy_gc_stats is not None else 0.0


YOUNG = 7000
"""Allocations (less deallocations) of tracked objects between young
collections of CPython's collector (its default is 700)."""

MIDDLE_EVERY = 10
"""Young collections per collection of CPython's middle generation: every
70,000 allocations (CPython's defaults: every 10 young collections of 700,
7,000 allocations)."""


def freeze_startup() -> None:
    """Put what is alive now out of the collector's way for good, and
    collect the young and the middle generations less often (CPython).

    Called once the process is ready: the modules, the app and the config
    live as long as the process, yet every full collection would walk them
    again (at steady load that was the tail of the latency: p99 59-73 ms
    without, 33-35 ms with). Garbage is collected first.

    A request leaves nothing in reference cycles (endpoint.py,
    tests/test_cycles.py), so young collections come from what is in
    flight: the count of tracked objects grows with requests that started
    since the last one and are still running. A young collection walks
    every young object still alive, and through each touches what it refers
    to: its connection, transport and site, under a storm of 2,500 clients
    memory no other request touched lately. Every ``YOUNG`` allocations
    instead of 700 it walks them less often: 0.609/0.490 CPU ms per 200 at
    2,500/64 kept-alive clients against 0.629/0.533 (docs/decisions.rst).
    The middle generation stays at every 70,000 (``MIDDLE_EVERY``): at
    every 100 young collections of 7,000 its collections paused the
    process for 150-220 ms."""
    if hasattr(gc, "freeze"):
        gc.collect()
        gc.freeze()
        old = gc.get_threshold()[2]
        gc.set_threshold(YOUNG, MIDDLE_EVERY, old)


def _generations() -> dict[str, Any]:
    """CPython's per-generation counters and the objects frozen at start-up;
    ``None`` where the collector has no generations to count (PyPy's
    ``gc.get_stats`` is something else)."""
    if not hasattr(gc, "get_count"):
        return {"counts": None, "thresholds": None, "generations": None, "frozen": None}
    return {"counts": list(gc.get_count()), "thresholds": list(gc.get_threshold()),
            "generations": gc.get_stats(), "frozen": gc.get_freeze_count()}
