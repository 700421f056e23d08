"""One configuration, compiled: what a request runs on from start to end.

A reload compiles a new :class:`Snapshot`; requests in flight keep the one
they started with. A partner whose settings did not change keeps its live
state (:class:`PartnerState`: its breaker, its calls in flight) across the
reload; one whose settings changed gets a fresh state that shares the old
one's :class:`CallSlots`, so that its cap holds across the reload, and
keeps its rate bucket if its ``max_rps`` did not change and its latency
window while ``adaptive_timeout`` stays on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from . import tls
from .adaptive import AdaptiveTimeout
from .breaker import Breaker
from .completion import Rule, rule
from .config import Config, PartnerConfig
from .lag import ReactorLag
from .ratecap import TokenBucket
from .targeting import Selector, Targeting
from .upstream import host_header

#: ``changed(partner, from, to, why)``: a partner's breaker changed state.
BreakerChanged = Callable[[str, str, str, str], None]


def _ignore(partner: str, old: str, new: str, why: str) -> None:
    pass


class Waiting(Protocol):
    """A call waiting for one of its partner's slots (fanout.SlotWait)."""

    @property
    def partner(self) -> PartnerState: ...

    def start(self) -> None:
        """A slot is free (and this call has left the queue): call."""


class CallSlots:
    """Calls in flight to one partner, and calls waiting for one of its
    slots (shared across a reload, see above)."""

    __slots__ = ("inflight", "waiting")

    def __init__(self) -> None:
        self.inflight = 0
        self.waiting: deque[Waiting] = deque()

    def release(self) -> None:
        """A call ended: its slot goes to the first call waiting for one (a
        call that is then refused, e.g. by the breaker, passes it on)."""
        self.inflight -= 1
        waiting = self.waiting
        while waiting and self.inflight < waiting[0].partner.config.max_concurrency:
            waiting.popleft().start()


class PartnerState:
    """A partner's live state: its config, prepared headers, calls in flight,
    circuit breaker (None when ``breaker_failures`` is 0), rate bucket (None
    without ``max_rps``; this process's share of it, one of ``workers``),
    adaptive timeout (None without ``adaptive_timeout``)."""

    __slots__ = ("config", "url", "headers", "slots", "breaker", "bucket", "adaptive")

    def __init__(self, config: PartnerConfig, clock: IReactorTime,
                 lag: ReactorLag | None = None, slots: CallSlots | None = None,
                 breaker_changed: BreakerChanged = _ignore, workers: int = 1) -> None:
        self.config = config
        self.url = config.url.encode("ascii")
        headers = Headers({b"Content-Type": [b"application/json"],
                           b"Host": [host_header(self.url)]})
        for name, value in config.headers.items():
            headers.setRawHeaders(name.encode("ascii"), [value.encode("utf-8")])
        self.headers = headers
        self.slots = slots or CallSlots()
        # A timeout while the event loop lags by a quarter of the partner's
        # timeout is the gateway's doing: it does not count against the partner.
        excused_after = config.timeout_ms / 4000.0
        name = config.name
        self.breaker = Breaker(
            clock, config.breaker_failures, config.breaker_cooldown_ms / 1000.0,
            config.breaker_probes,
            excused=lambda: lag is not None and lag.recent >= excused_after,
            changed=lambda old, new, why: breaker_changed(name, old, new, why),
        ) if config.breaker_failures else None
        self.bucket = TokenBucket(config.max_rps / workers, clock) if config.max_rps else None
        self.adaptive = AdaptiveTimeout(config.timeout_ms) if config.adaptive_timeout else None

    @property
    def timeout_ms(self) -> float:
        """The partner's timeout now: its effective one if adaptive."""
        return self.config.timeout_ms if self.adaptive is None else self.adaptive.timeout_ms

    def keep(self, old: PartnerState) -> None:
        """Take over what of ``old`` (the partner's state before a reload
        changed its settings) its unchanged keys still describe."""
        if old.config.max_rps == self.config.max_rps:
            self.bucket = old.bucket
        if old.adaptive is not None and self.adaptive is not None:
            self.adaptive = AdaptiveTimeout(self.config.timeout_ms, old.adaptive)


@dataclass(frozen=True)
class Snapshot:
    """One configuration, compiled."""

    config: Config
    selector: Selector
    targeting: Targeting
    partners: dict[str, PartnerState]
    deadline_header: bytes
    routes: dict[bytes, str]  # b"/bid" -> "bid": the route of a request path
    rules: dict[str, Rule]  # when a route's answer is ready, if not when all calls ended

    def select(self, route: str, country: str | None, os_name: str) -> list[PartnerState]:
        """The live states of the partners a request calls, in order."""
        partners = self.partners
        return [partners[p.name] for p in self.selector.select(route, country, os_name)]


def compile_snapshot(config: Config, clock: IReactorTime,
                     previous: Mapping[str, PartnerState] = {},
                     lag: ReactorLag | None = None,
                     breaker_changed: BreakerChanged = _ignore, workers: int = 1) -> Snapshot:
    """Compile ``config`` for one of ``workers`` processes; a partner whose
    PartnerConfig is unchanged keeps its state from ``previous`` (so its
    in-flight count, breaker, rate bucket and latency window stay true)."""
    tls.warn_unverified(config.partners)
    partners = {}
    for name, p in config.partners.items():
        old = previous.get(name)
        if old is not None and old.config == p:
            partners[name] = old
        else:  # new or changed: fresh state, but calls in flight still count
            partners[name] = state = PartnerState(
                p, clock, lag, old.slots if old is not None else None, breaker_changed, workers)
            if old is not None:
                state.keep(old)
    return Snapshot(
        config=config, selector=Selector(config), targeting=Targeting(config.targeting),
        partners=partners,
        deadline_header=config.server.deadline_header.encode("ascii"),
        routes={b"/" + name.encode("ascii"): name for name in config.routes},
        rules={name: r for name, route in config.routes.items()
               if (r := rule(route)) is not None})
