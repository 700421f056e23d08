"""Requests that wait for an in-flight slot, first come first served.

A request that finds every slot taken is refused at once (503), unless the
slots are full for a moment only: when they filled less than a lag period
ago, after a period in which some went unused (``Admission.may_queue``), the
whole request waits here instead, for at most ``Admission.slot_wait`` from
its first byte (as long as its calls would still get their whole
``timeout_ms``), and at most ``max_inflight`` of them at once. A burst that
comes all at once (clients whose timers fire together) is then served at the
pace slots free up, rather than refused but for the first few. Under a
standing overload no slot goes unused, and every request without one is
refused at once, as before: a queue that never empties would only add its
wait to every answer.

A wait that would end in a 503 ends at once. The queue knows its own pace
of service: waiters served per second of the process's CPU time, since its
first, measured once it has served ``PACE_AFTER`` since it was last empty
(until then, the pace of the last time). CPU time, not the clock's: slots
held by slow partners while the core idles say nothing of what the core
serves, and a partner must not talk the queue into refusing the next
burst. A request that pace would not reach before its wait ends, with
``PACE_MARGIN`` to spare, does not join; the newest waiters leave the same
way as the pace is measured again. A burst larger than the core serves in a
wait gets its 503s when it comes, not a wait later: the core reads a whole
burst before it serves any of it, so the pace is the last burst's until
this one's is known.

The queue holds connections (``Waiter``): each sent one whole request, kept
unparsed, and is read no further while it waits. When a slot frees up, the
oldest begins its request again (at the next turn of the loop, not inside
the answer that freed the slot); when its time is up, or the gateway
drains, it begins again too, and is refused then.
"""

from __future__ import annotations

import time
from typing import Hashable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .admission import Admission
from .deadlines import Timeline

PACE_AFTER = 16  # waiters served before the queue judges by its pace
PACE_MARGIN = 1.25  # keep this many times the waiters the pace would reach


class Waiter(Hashable, Protocol):
    """A connection whose one whole request waits (``GatewayChannel``)."""

    def leave_queue(self) -> None:
        """Its wait ended: begin its request again."""


class SlotQueue:
    """The requests waiting for a slot of ``admission``."""

    def __init__(self, clock: IReactorTime, admission: Admission) -> None:
        self._clock = clock
        self._admission = admission
        # each waiter, oldest first, with when its wait ends
        self._waiting: Timeline[Waiter] = Timeline(clock, self._time_up)
        self._serving: IDelayedCall | None = None
        self.cpu = time.process_time  # the process's CPU seconds
        self._first_served: float | None = None  # its CPU time, since the queue was last empty
        self._served = 0  # waiters served since then
        self._pace: float | None = None  # waiters served per CPU second, as last measured
        self.total = 0  # requests that ever waited
        admission.watch(self._room_changed)

    def __len__(self) -> int:
        return len(self._waiting)

    def ahead(self) -> bool:
        """Whether requests wait that the free slots would not all serve:
        a newcomer goes behind them."""
        waiting = len(self._waiting)
        return waiting > 0 and waiting >= self._admission.room

    def open(self) -> bool:
        """Whether a request may join now (``Admission.may_queue``): asked
        first, so that a refusal under a standing overload costs no more."""
        return self._admission.may_queue(len(self._waiting))

    def join(self, waiter: Waiter, arrived: float) -> bool:
        """Queue ``waiter``, whose request's first byte came at ``arrived``,
        once ``open()`` said it may; False: it may not wait after all (its
        time is up, or the pace would not reach it): refuse it."""
        now = self._clock.seconds()
        ends = arrived + self._admission.slot_wait
        if ends <= now or self._beyond_pace(len(self._waiting) + 1, ends, now):
            return False
        if not self._waiting:
            self._first_served, self._served = None, 0
        self._waiting.set_at(waiter, ends)
        self.total += 1
        self._admission.waits()
        return True

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` is gone (its client closed the connection)."""
        self._waiting.clear(waiter)

    def release_all(self) -> None:
        """End every wait now (the gateway drains)."""
        while self._waiting:
            self._let_go(next(iter(self._waiting)))

    def _beyond_pace(self, position: int, ends: float, now: float) -> bool:
        """Whether the queue's pace of service would not reach its
        ``position``-th waiter before ``ends``."""
        return self._pace is not None and position > PACE_MARGIN * self._pace * (ends - now)

    def _room_changed(self) -> None:
        if self._waiting and self._serving is None and self._admission.room > 0:
            self._serving = self._clock.callLater(0, self._serve)

    def _serve(self) -> None:
        self._serving = None
        now = self._clock.seconds()
        while self._waiting and self._admission.room > 0:
            if self._first_served is None:
                self._first_served = self.cpu()
            self._served += 1
            self._let_go(next(iter(self._waiting)))
        if self._first_served is not None and self._served >= PACE_AFTER:
            self._pace = self._served / max(self.cpu() - self._first_served, 1e-3)
        while self._waiting:  # the newest, if the pace would not reach them
            newest = next(reversed(self._waiting))
            if not self._beyond_pace(len(self._waiting), self._waiting.when(newest), now):
                break
            self._let_go(newest)

    def _let_go(self, waiter: Waiter) -> None:
        self._waiting.clear(waiter)
        waiter.leave_queue()

    def _time_up(self, waiter: Waiter) -> None:
        waiter.leave_queue()
