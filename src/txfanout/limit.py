"""The in-flight limit: ``max_inflight``, lowered while the gateway's own
event loop runs late.

A gateway that has taken on more than its core can serve runs every turn of
its event loop long: partners' answers wait unread in its sockets, calls
time out, answers leave late. The one sign of that which no client and no
partner can fake is the loop's own lag (lag.py: how late the gateway runs a
timer it set itself). A client's short deadline, a slow upload, a partner's
slow or dripping answer do not make it late; only work does, and that is
what the limit is for.

So the limit follows the lag, as TCP's window follows loss: when the worst
lag of the last half second, less the collector's pauses
(``ReactorLag.behind``: a collection stalls the loop once, whatever is in
flight, and a cut would not shorten the next), is above ``target``, the
limit is cut in proportion (to ``target / lag`` of the requests in flight,
or of the limit if fewer are in flight, at most by half, at most once per
``CUT_EVERY``, the time a cut takes to show, and not below ``FLOOR``);
each time it is below half the target, the limit grows by a tenth, back to
``max_inflight`` (from the floor in about six seconds of ordinary traffic),
but only while it is used: while at least half of it was taken at some
moment since the last measurement. A limit that is not used has shown
nothing (as TCP's window grows only while it is full): grown while the
loop idled between bursts, it would let in the next burst whole, and the
burst would run every turn long. Nor, past ``START``, has a limit filled by
a burst whose excess waited for slots (slotqueue.py): the queue serves the
burst at the pace slots free up, and grown, the limit would let the next
burst in whole
(1,000 clients sending in the same instant once a second grew it from 66
to 815 in 18 s on PyPy, a tenth a burst, until each burst's calls overran
the partners' ``max_concurrency``: bench/RESULTS.md, twenty-fourth
sitting). Nor does it grow past ``START`` while the
process keeps its core busy (``BUSY``: its CPU time over the last lag
interval): more in flight would not be served any sooner, only wait, in
the loop's turns and in memory (at 2,500 clients on CPython, some 240 in
flight where 35 keep the core busy, and a tenth more CPU per request, most
of it the collector's), and a limit grown past ``START`` while the core had
room comes back toward it while the core is busy, a hundredth per sample
(``SETTLE``): grown by a light sample, it is back in a few seconds; needed
there (partners slow to answer, so that more must be in flight to keep the
core busy), it steps below that level only now and then, and the next
sample with room grows it back. Below ``START`` it grows back busy or not:
a limit cut by a passing stall is not kept low by the work that follows.
Under overload it settles at ``START`` or at what keeps the core busy,
whichever is more, or lower where the loop's turns would take more than the
target.

While the core is busy and requests are still refused for want of a slot,
it comes down further, a twentieth per sample (``SHRINK``), to
``REFUSING``: those requests are refused whatever the limit, and each slot
more only adds a request that waits in the loop and is alive at each of
PyPy's minor collections (at 2,500 keep-alive clients on PyPy, 41-47 in
flight against 28-34 at 64 clients, and a third more surviving each
collection: bench/RESULTS.md, twenty-second sitting). Both are the
gateway's own evidence: its CPU time, which only work it does fills (slots
held by slow or dripping partners leave the core idle, and the limit is
not lowered), and what it refused. If fewer in flight leave the core room
(partners slow to answer), it grows again as above.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

MAX_CUT = 0.5
CUT_EVERY = 0.5  # seconds: the lag window (ReactorLag: 5 samples of 0.1 s)
GROW = 1.1
SETTLE = 1.01  # back toward START while busy: slowly, see the module's docstring
FLOOR = 8
START = 64  # where an adaptive limit starts: see the module's docstring
BUSY = 0.95  # the share of a core in use from which the limit no longer grows
REFUSING = 32  # where a busy core that still refuses requests brings it: see the docstring
SHRINK = 1.05


class InflightLimit:
    """How many requests may be in flight now (``current``)."""

    __slots__ = ("_clock", "_adaptive", "ceiling", "target", "value", "_next_cut")

    def __init__(self, clock: IReactorTime, ceiling: int, adaptive: bool = True,
                 target: float = 0.1) -> None:
        self._clock = clock
        self._next_cut = 0.0
        self.value = float(min(ceiling, START) if adaptive else ceiling)
        self.configure(ceiling, adaptive, target)

    def configure(self, ceiling: int, adaptive: bool, target: float) -> None:
        """A new ``max_inflight``, whether to adapt below it, and the lag
        (seconds) to keep the event loop under."""
        self.ceiling = ceiling
        self.target = target
        self._adaptive = adaptive
        self.value = float(ceiling) if not adaptive else min(self.value, float(ceiling))

    @property
    def current(self) -> int:
        return int(self.value)

    def observe(self, lag: float, inflight: int, busy: float = 0.0,
                refusing: bool = False, waited: bool = False) -> None:
        """Follow one measurement of the recent lag (seconds); ``inflight``:
        the most requests in flight at once since the last one; ``busy``:
        the share of a core the process used since the last one;
        ``refusing``: whether a request was refused for want of a slot since
        the last one; ``waited``: whether a request waited for a slot since
        the last one."""
        if not self._adaptive:
            return
        if lag > self.target:
            now = self._clock.seconds()
            if now >= self._next_cut:
                base = min(self.value, float(max(inflight, FLOOR)))
                cut = max(MAX_CUT, self.target / lag)
                self.value = max(float(min(FLOOR, self.ceiling)), base * cut)
                self._next_cut = now + CUT_EVERY
            return
        anchor, step = (REFUSING, SHRINK) if refusing and busy >= BUSY else (START, SETTLE)
        if busy >= BUSY and self.value > anchor:
            self.value = max(float(anchor), self.value / step)
        elif (lag < self.target / 2 and self.value < self.ceiling and 2 * inflight >= self.value
              and (self.value < anchor or busy < BUSY and not waited)):
            self.value = min(float(self.ceiling), self.value * GROW + 1.0)
