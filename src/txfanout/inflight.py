"""What is in flight: the live view of fan-outs, and the overdue sentinel.

Every fan-out in ``Gateway.inflight`` ends by its deadline (each call is
bounded by it), so one that is still there well after its deadline is a
leak. :class:`OverdueWatch` counts them and logs each one once.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from .phases import WAITING_SLOT
from .timers import Chain

if TYPE_CHECKING:
    from .fanout import Fanout

log = Logger()

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000
OVERDUE_GRACE_S = 1.0  # past its deadline by more than this: overdue


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def describe(fanout: "Fanout", now: float) -> dict[str, Any]:
    """One fan-out as JSON: id, route, age, deadline, each partner's state."""
    partners = []
    for name, result, phase in zip(fanout.partners, fanout.results, fanout.phases):
        if result is not None:
            state, elapsed = f"done:{result.outcome}", result.latency_ms
        elif phase is not None:
            state, elapsed = phase.state, _ms(now - phase.started)
        else:
            state, elapsed = WAITING_SLOT, 0.0
        call = {"partner": name, "state": state, "elapsed_ms": elapsed}
        if phase is not None:  # the call started: the timeout it was given
            call["timeout_ms"] = phase.timeout_ms
        partners.append(call)
    return {
        "id": fanout.request_id, "route": fanout.route,
        "age_ms": _ms(now - fanout.started),
        "deadline_ms": _ms(fanout.deadline_at - fanout.started),
        "left_ms": _ms(fanout.deadline_at - now),
        "partners": partners,
    }


def oldest(inflight: Iterable["Fanout"], now: float, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` oldest fan-outs, oldest first, described."""
    chosen = heapq.nsmallest(limit, inflight, key=lambda f: f.started)
    return [describe(f, now) for f in chosen]


class OverdueWatch:
    """Scans the in-flight fan-outs every ``interval`` seconds once started:
    ``count`` is how many were overdue at the last scan; each overdue one is
    logged once, with its details."""

    def __init__(self, clock: IReactorTime, inflight: set["Fanout"],
                 grace: float = OVERDUE_GRACE_S, interval: float = 1.0) -> None:
        self._clock = clock
        self._inflight = inflight
        self.grace = grace
        self.interval = interval
        self.count = 0
        self._warned: set["Fanout"] = set()
        self._chain = Chain(clock, self._tick)

    def scan(self) -> int:
        """Count (and log, once each) the overdue fan-outs now."""
        now = self._clock.seconds()
        limit = now - self.grace
        overdue = [f for f in self._inflight if f.deadline_at < limit]
        self._warned.intersection_update(overdue)  # only those still here
        for fanout in overdue:
            if fanout not in self._warned:
                self._warned.add(fanout)
                log.warn("overdue request {id} on route {route}: {age_ms} ms old, "
                         "deadline {deadline_ms} ms; partners: {partners}",
                         **_log_fields(describe(fanout, now)))
        self.count = len(overdue)
        return self.count

    def start(self) -> None:
        self._chain.start(self.interval)

    def stop(self) -> None:
        self._chain.stop()

    def _tick(self) -> None:
        self._chain.next(self.interval)
        self.scan()


def _log_fields(view: dict[str, Any]) -> dict[str, Any]:
    fields = dict(view)
    fields["partners"] = ", ".join(f"{p['partner']}={p['state']} ({p['elapsed_ms']} ms)"
                                   for p in view["partners"])
    return fields
