"""Per-partner circuit breaker.

Closed: every call goes. After ``failures`` consecutive failures (timeout,
error, 5xx) it opens: calls are refused at no cost (outcome ``open``) for
``cooldown_s``. Then it is half-open: up to ``probes`` calls go at once; one
failure opens it again, ``probes`` successes close it. Outcomes that say
nothing about the partner's health (shed, skipped, cancelled) count for
neither side, so a slow but answering partner is not tripped by ``shed``;
nor does a timeout while the gateway's own event loop lags (``excused``)
or with the partner's answer waiting unread in the gateway's socket: an
overloaded gateway reads answers late, and that is not the partner's
failure.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

from . import outcomes

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

_FAILURES = frozenset((outcomes.TIMEOUT, outcomes.ERROR))
_SUCCESSES = frozenset((outcomes.OK, outcomes.TOO_LARGE))


def verdict(outcome: str, status: int | None) -> bool | None:
    """True for a healthy answer, False for a failure, None for neither."""
    if outcome in _FAILURES:
        return False
    if outcome == outcomes.HTTP_ERROR:
        return status is None or status < 500
    if outcome in _SUCCESSES:
        return True
    return None


class Breaker:
    """One partner's breaker; ``allow()`` before a call, ``record()`` after."""

    __slots__ = ("_clock", "_failures", "_cooldown", "_probes", "_excused", "state",
                 "_consecutive", "_open_until", "_probing", "_probe_successes")

    def __init__(self, clock: IReactorTime, failures: int, cooldown_s: float,
                 probes: int, excused: Callable[[], bool] = lambda: False) -> None:
        self._clock = clock
        self._excused = excused
        self._failures = failures
        self._cooldown = cooldown_s
        self._probes = probes
        self.state = CLOSED
        self._consecutive = 0
        self._open_until = 0.0
        self._probing = 0
        self._probe_successes = 0

    @property
    def is_open(self) -> bool:
        return self.state != CLOSED

    def allow(self) -> bool:
        """May a call start now? In half-open state this takes a probe slot."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock.seconds() < self._open_until:
                return False
            self.state = HALF_OPEN
            self._probing = 0
            self._probe_successes = 0
        if self._probing >= self._probes:
            return False
        self._probing += 1
        return True

    def record(self, outcome: str, status: int | None, unread: bool = False) -> None:
        """Account for a call that ``allow()`` let through (``unread``: it
        timed out with the answer waiting unread; see CallResult)."""
        healthy = verdict(outcome, status)
        if outcome == outcomes.TIMEOUT and (unread or self._excused()):
            healthy = None
        if self.state == HALF_OPEN:
            self._probing = max(0, self._probing - 1)
            if healthy is False:
                self._trip()
            elif healthy:
                self._probe_successes += 1
                if self._probe_successes >= self._probes:
                    self.state = CLOSED
                    self._consecutive = 0
            return
        if self.state == OPEN or healthy is None:
            return  # a late result of a call started before the breaker opened
        if healthy:
            self._consecutive = 0
            return
        self._consecutive += 1
        if self._consecutive >= self._failures:
            self._trip()

    def _trip(self) -> None:
        self.state = OPEN
        self._open_until = self._clock.seconds() + self._cooldown
        self._consecutive = 0
