"""Who gets in: the in-flight slots, and why a request is refused one.

A request takes a slot once it has arrived whole (or is refused with 503
before anything is spent on it) and gives it back when it is answered or
abandoned. It is refused while the gateway drains, when it waited in the
listening socket's backlog until no partner call could start within its
deadline (a connection's first request that keeps it: backlog.py), while
every slot is taken (``limit``: ``max_inflight``, lowered while the event
loop runs late, see limit.py), or while the event loop runs late by more
than ``max_lag_ms`` (lag.py; the collector's pauses aside:
``ReactorLag.behind``). The reasons below are the ``reason`` label of
``txfanout_shed_total`` and pick the 503's prepared text (wire.py).

A request that finds every slot taken may wait for one instead, when the
slots are full for a moment only (``may_queue``: they filled less than a lag
period ago, after a period in which some went unused), for ``slot_wait``: as
long as its calls still get their partners' whole ``timeout_ms`` within the
deadline (budget.py). The queue is the site's (slotqueue.py).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from .budget import max_wait, slot_wait
from .config import ServerConfig
from .lag import ReactorLag
from .limit import InflightLimit

SHED_MAX_INFLIGHT = "max_inflight"
SHED_REACTOR_LAG = "reactor_lag"
SHED_DRAINING = "draining"
SHED_BACKLOG = "backlog"
SHED_PARTNERS_UNAVAILABLE = "partners_unavailable"  # admitted, no partner callable (gateway.py)
SHED_REASONS = (SHED_MAX_INFLIGHT, SHED_REACTOR_LAG, SHED_DRAINING, SHED_BACKLOG,
                SHED_PARTNERS_UNAVAILABLE)

RETRY_AFTER_S = 1  # what every 503 says in Retry-After
DEFAULT_MAX_LAG_MS = 200  # the lag the limit steers by when max_lag_ms is 0 (off)


def lag_target(server: ServerConfig) -> float:
    """The lag (seconds) the adaptive limit keeps the event loop under: half
    of ``max_lag_ms``, where every request is refused."""
    return (server.max_lag_ms or DEFAULT_MAX_LAG_MS) / 2000.0


class Admission:
    """The in-flight slots of one gateway process."""

    def __init__(self, clock: IReactorTime, lag: ReactorLag, server: ServerConfig,
                 refused: Callable[[str], None] = lambda reason: None,
                 timeouts_ms: Iterable[int] = ()) -> None:
        self.lag = lag
        self._clock = clock
        self.limit = InflightLimit(clock, server.max_inflight, server.adaptive_inflight,
                                   lag_target(server))
        lag.watch(self._follow)
        self._refused = refused
        self._max_lag_s = server.max_lag_ms / 1000.0
        self._max_wait_s = max_wait(server)
        self.slot_wait = slot_wait(server, timeouts_ms)  # see the module's docstring
        self.admitted = 0
        self.admitted_total = 0
        self._refusing = False  # refused a request for want of a slot since ``_follow``
        self._waited = False  # a request waited for a slot since ``_follow``
        self._peak = 0  # the most admitted at once since the limit last followed the lag
        self.unused = 0  # slots no request took over the last lag period (``_follow``)
        # When the slots last filled after a lag period in which some went
        # unused (None: not since; -inf: no such period yet, as if always full).
        self._filled_at: float | None = -math.inf
        self.draining = False
        self._idle_waiters: list[Deferred[None]] = []
        self._watchers: list[Callable[[], None]] = []
        self._on_drain: list[Callable[[], None]] = []

    def watch(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher()`` whenever the room may have changed."""
        self._watchers.append(watcher)

    def _changed(self) -> None:
        for watcher in self._watchers:
            watcher()

    def configure(self, server: ServerConfig, timeouts_ms: Iterable[int] = ()) -> None:
        """Apply a reloaded ``[server]`` section, and its partners'
        ``timeouts_ms``."""
        self.limit.configure(server.max_inflight, server.adaptive_inflight, lag_target(server))
        self._max_lag_s = server.max_lag_ms / 1000.0
        self._max_wait_s = max_wait(server)
        self.slot_wait = slot_wait(server, timeouts_ms)
        self._changed()

    def drain(self) -> None:
        """Refuse every request from now on (the daemon drains), and tell
        those who asked (``on_drain``)."""
        self.draining = True
        for callback in self._on_drain:
            callback()

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the daemon starts to drain."""
        self._on_drain.append(callback)

    @property
    def room(self) -> int:
        """Slots free now."""
        return self.limit.current - self.admitted


    def _follow(self, lag: ReactorLag) -> None:
        if self._peak < self.limit.current:  # a slot went unused through the period
            self._filled_at = None
        elif self._filled_at is None:  # full through it (the limit came down)
            self._filled_at = self._clock.seconds() - lag.interval
        self.limit.observe(lag.behind, self._peak, lag.busy, self._refusing, self._waited)
        self._refusing = self._waited = False
        self.unused = max(0, self.limit.current - self._peak)
        self._peak = self.admitted
        self._changed()

    def may_queue(self, waiting: int) -> bool:
        """Whether a request that found no slot may wait for one, with
        ``waiting`` requests waiting already (slotqueue.py): only while the
        slots filled less than a lag period ago, after a period in which some
        went unused (they are full for a moment: a burst arriving, not a
        standing overload), and up to ``max_inflight`` waiting."""
        return (self.slot_wait > 0 and not self.draining and waiting < self.limit.ceiling
                and (self._filled_at is None
                     or self._clock.seconds() - self._filled_at < self.lag.interval))

    def waits(self) -> None:
        """A request waits for a slot (slotqueue.py)."""
        self._waited = True

    def shed_reason(self, waited: float = 0.0) -> str | None:
        """Why a request arriving now would be refused; None: it would not.
        ``waited``: seconds it waited in the backlog before it was read."""
        if self.draining:
            return SHED_DRAINING
        if waited > self._max_wait_s:
            return SHED_BACKLOG
        if self.admitted >= self.limit.current:
            return SHED_MAX_INFLIGHT
        if self._max_lag_s and self.lag.behind > self._max_lag_s:
            return SHED_REACTOR_LAG
        return None

    def admit(self) -> str | None:
        """Take a slot; or count the refusal and say why not."""
        reason = self.shed_reason()
        if reason is None:
            self.admitted += 1
            self.admitted_total += 1
            if self.admitted > self._peak:
                self._peak = self.admitted
            if self._filled_at is None and self.admitted >= self.limit.current:
                self._filled_at = self._clock.seconds()
            self._changed()
            return None
        self.refused(reason)
        return reason

    def refused(self, reason: str) -> None:
        """Count a request refused (by ``admit``, or by the site before it
        was parsed)."""
        if reason == SHED_MAX_INFLIGHT:
            self._refusing = True
        self._refused(reason)

    def release(self) -> None:
        """Give a slot back."""
        self.admitted -= 1
        self._changed()
        if not self.admitted and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires when no slot is taken (at once if none is)."""
        if not self.admitted:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d
