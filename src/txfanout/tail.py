"""Tail sampling (``tail_sample``): how late a timed-out partner would have been.

A timeout hides how late the partner would have answered. For a share of
a partner's timed-out calls (``tail_sample``, default 0.01: the 100th, 200th
... timeout of each partner; 1: every one) the request
still gets its ``timeout`` at the timeout, but the call is not aborted:
it runs on, off the request's path, until it ends or :data:`BOUND` times
its timeout has passed since it started (then it is aborted). Its end is
observed in ``txfanout_partner_tail_ratio{partner}`` as its latency over
its timeout: an answer (any status, read whole under
``max_response_bytes``, then dropped) at its ratio, anything else (no
answer by the bound, an error, a body too large) at +Inf. The share of
samples at or under 1.5 is the share of those timeouts a timeout 50%
longer would have answered.

Only timeouts of calls that had the partner's whole ``timeout_ms`` (not
cut by the request's deadline nor shortened by ``adaptive_timeout``) and
whose request went out are sampled; cancelled and abandoned calls never
time out. At most :data:`MAX_PER_PARTNER` samples run at once per partner
and :data:`MAX_RUNNING` in the process; past that, a timeout is not
sampled. A sample keeps its partner's slot (``max_concurrency``) until it
ends; its ``max_rps`` token it took when it started; the breaker saw its
timeout once, at the timeout. At shutdown the samples running are aborted
(and not observed).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

BOUND = 2.0  # a sample runs until twice its timeout at most
BUCKETS = (1.25, 1.5, 1.75, 2.0)  # latency / timeout; +Inf: no answer by the bound
MAX_PER_PARTNER = 4
MAX_RUNNING = 16
EPSILON = 1e-9  # a hundred shares of 0.01 make one, whatever floats say


class Slots(Protocol):
    """A partner's call slots (snapshot.CallSlots)."""

    inflight: int

    def release(self) -> None: ...


def _ignore(partner: str, ratio: float) -> None:
    pass


class Sample:
    """One timed-out call running on; :meth:`ended` when its call ends."""

    __slots__ = ("_sampler", "partner", "_slots", "_started", "_timeout_s", "_bound")

    def __init__(self, sampler: TailSampler, partner: str, slots: Slots, call: Deferred[object],
                 started: float, timeout_s: float, clock: IReactorTime) -> None:
        self._sampler = sampler
        self.partner = partner
        self._slots = slots
        self._started = started
        self._timeout_s = timeout_s
        slots.inflight += 1  # its own hold on the slot: the request lets go of its one
        # max(): a timeout the reactor ran late may come past the bound already.
        self._bound = clock.callLater(max(0.0, started + BOUND * timeout_s - clock.seconds()),
                                      call.cancel)

    def ended(self, answered: bool, now: float) -> None:
        """Its call ended (``answered``: with a whole answer)."""
        if self._bound.active():
            self._bound.cancel()
        self._slots.release()
        ratio = (now - self._started) / self._timeout_s if answered else math.inf
        self._sampler.ended(self, ratio)


class TailSampler:
    """One process's tail samples: which timeouts are sampled, how many run
    (``running``, per partner), and ``observe(partner, ratio)`` at each end."""

    def __init__(self, observe: Callable[[str, float], None] = _ignore) -> None:
        self.observe = observe
        self.running: dict[str, int] = {}
        self._credit: dict[str, float] = {}  # per partner: its share of each timeout, summed
        self._calls: dict[Sample, Deferred[object]] = {}
        self._closed = False

    def sample(self, partner: str, share: float, slots: Slots, call: Deferred[object],
               started: float, timeout_s: float, clock: IReactorTime) -> Sample | None:
        """A call to ``partner`` timed out: its Sample if it runs on, else None."""
        credit = self._credit.get(partner, 0.0) + share
        if credit < 1.0 - EPSILON:
            self._credit[partner] = credit
            return None
        self._credit[partner] = max(0.0, credit - 1.0)
        running = self.running.get(partner, 0)
        if self._closed or running >= MAX_PER_PARTNER or len(self._calls) >= MAX_RUNNING:
            return None
        sample = Sample(self, partner, slots, call, started, timeout_s, clock)
        self.running[partner] = running + 1
        self._calls[sample] = call
        return sample

    def ended(self, sample: Sample, ratio: float) -> None:
        del self._calls[sample]
        left = self.running[sample.partner] - 1
        if left:
            self.running[sample.partner] = left
        else:
            del self.running[sample.partner]
        if not self._closed:
            self.observe(sample.partner, ratio)

    def close(self) -> None:
        """Abort every sample running, and sample no more."""
        self._closed = True
        for call in list(self._calls.values()):
            call.cancel()
