"""A request's time: from its first byte to its deadline, and each call's
share of it.

The deadline counts from the request's first byte: ``server.deadline_ms``,
or less when the client asks for less in the deadline header (never more).
Each call's timeout is its partner's ``timeout_ms``, capped by what is left
of the deadline less ``reserve_ms`` (the time to answer); a call that would
get less than ``min_call_ms`` is not started (outcome ``skipped``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ._compat import SLOTS
from .config import ServerConfig


class BadDeadline(ValueError):
    """The deadline header is malformed (answered with 400)."""


def deadline_ms(asked: bytes | None, server: ServerConfig) -> int:
    """The request's deadline in ms: ``server.deadline_ms``, or the header's
    ``asked`` value when that is smaller."""
    if asked is None:
        return server.deadline_ms
    if not asked.isascii() or not asked.isdigit() or not 0 < len(asked) <= 9 \
            or int(asked) == 0:
        raise BadDeadline(f"{server.deadline_header} must be a positive integer (ms)")
    return min(server.deadline_ms, int(asked))


def max_wait(server: ServerConfig) -> float:
    """The longest (seconds) a request may wait before it is read and still
    have a call started: ``deadline_ms`` less ``reserve_ms`` and
    ``min_call_ms`` (see ``Budget.last_start``)."""
    return (server.deadline_ms - server.reserve_ms - server.min_call_ms) / 1000.0


def slot_wait(server: ServerConfig, timeouts_ms: Iterable[int]) -> float:
    """The longest (seconds) a request may wait for an in-flight slot: as
    long as its calls would still get their partners' whole ``timeout_ms``
    (the longest of ``timeouts_ms``) within ``deadline_ms`` less
    ``reserve_ms``; 0: it may not wait."""
    return max(0, server.deadline_ms - server.reserve_ms - max(timeouts_ms, default=0)) / 1000.0


@dataclass(**SLOTS)
class Budget:
    """When a request started (its first byte) and when its answer is due."""

    started: float
    deadline_at: float
    reserve_ms: int
    min_call_ms: int

    @classmethod
    def of(cls, started: float, ms: int, server: ServerConfig) -> "Budget":
        return cls(started, started + ms / 1000.0, server.reserve_ms, server.min_call_ms)

    @property
    def last_start(self) -> float:
        """The latest time a call can start (with ``min_call_ms`` left)."""
        return self.deadline_at - (self.reserve_ms + self.min_call_ms) / 1000.0

    def for_call(self, timeout_ms: int, now: float) -> float | None:
        """A call's timeout in ms, started ``now``; None: too little is left
        to start it."""
        left_ms = (self.deadline_at - now) * 1000.0 - self.reserve_ms
        budget_ms = min(float(timeout_ms), left_ms)
        return budget_ms if budget_ms >= self.min_call_ms else None
