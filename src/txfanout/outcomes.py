"""The outcome of one partner call: a closed set, and the record of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from txfanout._compat import SLOTS

OK = "ok"                  # 2xx
HTTP_ERROR = "http_error"  # any other status; status and body kept
TIMEOUT = "timeout"        # no complete answer within the call's budget
ERROR = "error"            # refused, reset, DNS, TLS, malformed HTTP
TOO_LARGE = "too_large"    # body over max_response_bytes; connection aborted
SHED = "shed"              # partner at max_concurrency; not called
OPEN = "open"              # partner's circuit breaker open; not called
SKIPPED = "skipped"        # less than min_call_ms of budget left; not called
CANCELLED = "cancelled"    # the client went away; the call was aborted

ALL = (OK, HTTP_ERROR, TIMEOUT, ERROR, TOO_LARGE, SHED, OPEN, SKIPPED, CANCELLED)
NOT_CALLED = frozenset((SHED, OPEN, SKIPPED))  # the partner never saw the request


@dataclass(**SLOTS)
class CallResult:
    """What happened to one partner call, as reported to the client."""

    partner: str
    outcome: str
    status: int | None = None
    latency_ms: float = 0.0
    body: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "partner": self.partner, "outcome": self.outcome, "status": self.status,
            "latency_ms": self.latency_ms, "body": self.body,
        }
        if self.error is not None:
            out["error"] = self.error
        return out
