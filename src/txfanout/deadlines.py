"""Client connections' timeouts, kept off the reactor's heap.

The reactor keeps every ``callLater`` on one heap, and every request pushes
its own timers through it (its fan-out's deadline, its calls' timeouts, the
pool's). With a timer there for each open client connection (its idle
timeout, its hold), each push and pop walks some log2(n) levels of timers no
request touched lately: beside 2,436 idle connections each of 64 clients'
requests took 1.1% more instructions and 5.7 times the last-level cache
misses (``python -m bench count``), and none more with the idle timeouts
kept here. Twisted's idle timeout also makes a new ``DelayedCall`` (with
its bound methods) for every request.

:class:`Deadlines` keeps deadlines that all have one length (every
connection of a site has the same idle timeout, every request the same
time to arrive whole, every stalled close the same time to drain): they
fall due in the order they were set, so a dict keeps them in order, and
setting, moving or clearing one is a dict operation. :class:`Timeline`
keeps deadlines of any length (holds) on a heap of its own. Each has one
reactor call pending at most, for its soonest deadline (or earlier: a
deadline moved or cleared leaves the call where it was, to find nothing
due and wait again).
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Callable, Generic, Hashable, Iterator, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .timers import cancel

K = TypeVar("K", bound=Hashable)


class _Deadlines(Generic[K]):
    """Deadlines by key, and one reactor call for the soonest: what
    :class:`Deadlines` and :class:`Timeline` share. ``expire(key)`` is
    called when ``key``'s deadline comes, once it is no longer held."""

    def __init__(self, clock: IReactorTime, expire: Callable[[K], object]) -> None:
        self._clock = clock
        self._expire = expire
        self._ends: dict[K, float] = {}  # each key's deadline, in the order set
        self._call: IDelayedCall | None = None
        self._due = 0.0  # when the pending call was set to run

    def __len__(self) -> int:
        return len(self._ends)

    def __contains__(self, key: object) -> bool:
        return key in self._ends

    def __iter__(self) -> Iterator[K]:
        """The keys, the one set longest ago first."""
        return iter(self._ends)

    def __reversed__(self) -> Iterator[K]:
        """The keys, the one set last first."""
        return reversed(self._ends)

    def when(self, key: K) -> float:
        """``key``'s deadline."""
        return self._ends[key]

    def clear(self, key: K) -> None:
        """Forget ``key``'s deadline, if it has one."""
        if self._ends.pop(key, None) is not None and not self._ends:
            self._forget()

    def _forget(self) -> None:
        cancel(self._call)
        self._call = None

    def _wake_at(self, when: float) -> None:
        """Have the reactor call no later than ``when``."""
        if self._call is not None:
            if self._due <= when:
                return
            self._call.cancel()
        self._due = when
        self._call = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._run)

    def _run(self) -> None:
        self._call = None
        self._expire_until(self._clock.seconds())

    def _expire_until(self, now: float) -> None:
        raise NotImplementedError


class Deadlines(_Deadlines[K]):
    """Deadlines ``length`` seconds after each was set (see the module)."""

    def __init__(self, clock: IReactorTime, length: float,
                 expire: Callable[[K], object]) -> None:
        super().__init__(clock, expire)
        self.length = length

    def set(self, key: K) -> None:
        """``key``'s deadline is ``length`` from now (moved, if it had one)."""
        ends = self._ends
        ends.pop(key, None)
        when = ends[key] = self._clock.seconds() + self.length
        if self._call is None:  # else it runs no later than the soonest
            self._wake_at(when)

    def _expire_until(self, now: float) -> None:
        ends = self._ends
        while ends:
            key = next(iter(ends))
            when = ends[key]
            if when > now:
                self._wake_at(when)
                return
            del ends[key]
            self._expire(key)


class Timeline(_Deadlines[K]):
    """Deadlines of any length (see the module)."""

    def __init__(self, clock: IReactorTime, expire: Callable[[K], object]) -> None:
        super().__init__(clock, expire)
        self._heap: list[tuple[float, int, K]] = []  # stale once moved or cleared
        self._order = count()

    def set(self, key: K, delay: float) -> None:
        """``key``'s deadline is ``delay`` seconds from now (moved, if it
        had one)."""
        self.set_at(key, self._clock.seconds() + delay)

    def set_at(self, key: K, when: float) -> None:
        """``key``'s deadline is ``when`` (moved, if it had one)."""
        ends = self._ends
        ends.pop(key, None)
        ends[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))
        self._wake_at(when)

    def _forget(self) -> None:
        self._heap.clear()
        super()._forget()

    def _expire_until(self, now: float) -> None:
        heap, ends = self._heap, self._ends
        while heap:
            when, _, key = heap[0]
            if ends.get(key) != when:  # moved or cleared since
                heapq.heappop(heap)
            elif when > now:
                self._wake_at(when)
                return
            else:
                heapq.heappop(heap)
                del ends[key]
                self._expire(key)
