"""Per-partner circuit breaker.

Closed: every call goes. Once, within the last ``WINDOW_S`` seconds, at
least ``failures`` calls failed (timeout, error, too_large, 5xx) and they were at least
half of the calls that ended, it opens: calls are refused at no cost
(outcome ``open``) for ``cooldown_s``. Then it is half-open: up to ``probes``
calls go at once; one failure opens it again, ``probes`` successes close it.

Failures "in a row" would not do: at a few hundred calls per second, timers
that expire together end their calls together, and a partner that is slow
for a fifth of its calls has five in a row every second or so. A share of a
window tells a degraded partner from a broken one.

Only failures the partner caused count. Outcomes that say nothing about the
partner's health (shed, skipped, cancelled) count for neither side, and
neither does a timeout that is not the partner's doing: one whose budget
the request cut below the partner's ``timeout_ms`` (a client's short
deadline, a slow upload, an adaptive timeout: adaptive.py), or one while the gateway's own event loop lags
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
WINDOW_S = 10  # seconds of results a closed breaker weighs, in one-second buckets

# too_large is the partner's doing too: an answer the gateway can never use
# (a body past max_response_bytes, or chunk framing that counts past it).
_FAILURES = frozenset((outcomes.TIMEOUT, outcomes.ERROR, outcomes.TOO_LARGE))
_SUCCESSES = frozenset((outcomes.OK,))


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
                 "state", "epoch", "_seconds", "_failed", "_judged", "_open_until",
                 "_probing", "_probe_successes")

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
        # Per second of the window (a ring): which second, calls failed, calls judged.
        self._seconds = [-1] * WINDOW_S
        self._failed = [0] * WINDOW_S
        self._judged = [0] * WINDOW_S
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
                    self._enter(CLOSED, f"{self._probes} probes answered")
            return
        if healthy is not None:
            self._judge(healthy, outcome)

    def _judge(self, healthy: bool, outcome: str) -> None:
        """Count one result of a closed breaker; trip it if that is enough."""
        now = int(self._clock.seconds())
        i = now % WINDOW_S
        if self._seconds[i] != now:
            self._seconds[i], self._failed[i], self._judged[i] = now, 0, 0
        self._judged[i] += 1
        if healthy:
            return
        self._failed[i] += 1
        recent = [j for j, second in enumerate(self._seconds) if now - second < WINDOW_S]
        failed = sum(self._failed[j] for j in recent)
        judged = sum(self._judged[j] for j in recent)
        if failed >= self._failures and 2 * failed >= judged:
            self._trip(f"{failed} of {judged} calls failed in {WINDOW_S} s (last: {outcome})")

    def _trip(self, why: str) -> None:
        self._open_until = self._clock.seconds() + self._cooldown
        self._enter(OPEN, why)

    def _enter(self, state: str, why: str) -> None:
        old, self.state = self.state, state
        self.epoch += 1
        if state == CLOSED:
            self._seconds = [-1] * WINDOW_S  # a fresh start: what came before is judged
        self._changed(old, state, why)
