"""Per-partner circuit breaker.

Closed: every call goes. After ``failures`` consecutive failures (timeout,
error, 5xx) it opens: calls are refused at no cost (outcome ``open``) for
``cooldown_s``. Then it is half-open: up to ``probes`` calls go at once; one
failure opens it again, ``probes`` successes close it.

Only failures the partner caused count. Outcomes that say nothing about the
partner's health (shed, skipped, cancelled) count for neither side, and
neither does a timeout that is not the partner's doing: one whose budget
the request cut below the partner's ``timeout_ms`` (a client's short
deadline, a slow upload), or one while the gateway's own event loop lags
(``excused``). A call's result counts only in the state it started in (its
``epoch``): a late answer of a call made before the breaker opened is no
probe, and cannot close it.

Every change of state is reported to ``changed(from, to, why)``.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

from . import outcomes

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

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


def _ignore(old: str, new: str, why: str) -> None:
    pass


class Breaker:
    """One partner's breaker: ``allow()`` before a call (then read
    ``epoch``), ``record()`` after it."""

    __slots__ = ("_clock", "_failures", "_cooldown", "_probes", "_excused", "_changed",
                 "state", "epoch", "_consecutive", "_open_until", "_probing",
                 "_probe_successes")

    def __init__(self, clock: IReactorTime, failures: int, cooldown_s: float,
                 probes: int, excused: Callable[[], bool] = lambda: False,
                 changed: Callable[[str, str, str], None] = _ignore) -> None:
        self._clock = clock
        self._excused = excused
        self._changed = changed
        self._failures = failures
        self._cooldown = cooldown_s
        self._probes = probes
        self.state = CLOSED
        self.epoch = 0  # counts the changes of state
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
            self._enter(HALF_OPEN, f"cool-down of {round(self._cooldown * 1000)} ms over")
            self._probing = 0
            self._probe_successes = 0
        if self._probing >= self._probes:
            return False
        self._probing += 1
        return True

    def record(self, outcome: str, status: int | None, epoch: int,
               cut: bool = False) -> None:
        """Account for a call that ``allow()`` let through in ``epoch``
        (``cut``: its budget was below the partner's timeout)."""
        if epoch != self.epoch:
            return  # started in another state: says nothing about this one
        healthy = verdict(outcome, status)
        if outcome == outcomes.TIMEOUT and (cut or self._excused()):
            healthy = None
        if self.state == HALF_OPEN:
            self._probing -= 1
            if healthy is False:
                self._trip(f"probe failed ({outcome})")
            elif healthy:
                self._probe_successes += 1
                if self._probe_successes >= self._probes:
                    self._consecutive = 0
                    self._enter(CLOSED, f"{self._probes} probes answered")
            return
        if healthy is None:
            return
        if healthy:
            self._consecutive = 0
            return
        self._consecutive += 1
        if self._consecutive >= self._failures:
            self._trip(f"{self._consecutive} failures in a row (last: {outcome})")

    def _trip(self, why: str) -> None:
        self._open_until = self._clock.seconds() + self._cooldown
        self._consecutive = 0
        self._enter(OPEN, why)

    def _enter(self, state: str, why: str) -> None:
        old, self.state = self.state, state
        self.epoch += 1
        self._changed(old, state, why)
