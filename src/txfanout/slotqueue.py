"""Requests that wait for an in-flight slot, first come first served.

A request that finds every slot taken is refused at once (503), unless the
slots are full for a moment only: when some slot went unused in the last lag
period (``Admission.may_queue``), the whole request waits here instead, for
at most ``Admission.slot_wait`` from its first byte (as long as its calls
would still get their whole ``timeout_ms``), and at most ``max_inflight`` of
them at once. A burst that comes all at once (clients whose timers fire
together) is then served at the pace slots free up, rather than refused but
for the first few. Under a standing overload no slot goes unused, and every
request without one is refused at once, as before: a queue that never
empties would only add its wait to every answer.

The queue holds connections (``Waiter``): each sent one whole request, kept
unparsed, and is read no further while it waits. When a slot frees up, the
oldest begins its request again (at the next turn of the loop, not inside
the answer that freed the slot); when its time is up, or the gateway
drains, it begins again too, and is refused then.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .admission import Admission
from .timers import cancel


class Waiter(Protocol):
    """A connection whose one whole request waits (``GatewayChannel``)."""

    def leave_queue(self) -> None:
        """Its wait ended: begin its request again."""


class SlotQueue:
    """The requests waiting for a slot of ``admission``."""

    def __init__(self, clock: IReactorTime, admission: Admission) -> None:
        self._clock = clock
        self._admission = admission
        self._ends: dict[Waiter, float] = {}  # each waiter: when its wait ends; oldest first
        self._timer: IDelayedCall | None = None  # the oldest one's end
        self._serving: IDelayedCall | None = None
        self.total = 0  # requests that ever waited
        admission.watch(self._room_changed)

    def __len__(self) -> int:
        return len(self._ends)

    def ahead(self) -> bool:
        """Whether requests wait that the free slots would not all serve:
        a newcomer goes behind them."""
        return bool(self._ends) and len(self._ends) >= self._admission.room

    def open(self) -> bool:
        """Whether a request may join now (``Admission.may_queue``): asked
        first, so that a refusal under a standing overload costs no more."""
        return self._admission.may_queue(len(self._ends))

    def join(self, waiter: Waiter, arrived: float) -> bool:
        """Queue ``waiter``, whose request's first byte came at ``arrived``;
        False: it may not wait (refuse it)."""
        ends = arrived + self._admission.slot_wait
        wait = ends - self._clock.seconds()
        if not self.open() or wait <= 0:
            return False
        self._ends[waiter] = ends
        self.total += 1
        self._admission.waits()
        if self._timer is None:
            self._timer = self._clock.callLater(wait, self._expire)
        return True

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` is gone (its client closed the connection)."""
        self._ends.pop(waiter, None)

    def release_all(self) -> None:
        """End every wait now (the gateway drains)."""
        self._let_go(len(self._ends))

    def _room_changed(self) -> None:
        if self._ends and self._serving is None and self._admission.room > 0:
            self._serving = self._clock.callLater(0, self._serve)

    def _serve(self) -> None:
        self._serving = None
        while self._ends and self._admission.room > 0:
            self._let_go(1)

    def _expire(self) -> None:
        # The oldest first: one whose wait ends sooner than an older one's
        # (it had waited in the listening socket's backlog) goes with it.
        self._timer = None
        now = self._clock.seconds()
        while self._ends and next(iter(self._ends.values())) <= now:
            self._let_go(1)
        if self._ends and self._timer is None:
            first = next(iter(self._ends.values()))
            self._timer = self._clock.callLater(max(0.0, first - now), self._expire)

    def _let_go(self, count: int) -> None:
        """The ``count`` oldest waiters leave the queue."""
        for _ in range(count):
            if not self._ends:
                break
            waiter = next(iter(self._ends))
            del self._ends[waiter]
            waiter.leave_queue()
        if not self._ends:
            cancel(self._timer)
            self._timer = None
