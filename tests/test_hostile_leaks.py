"""After rounds of hostile partners and clients, nothing is left behind.

Each round sends fan-outs to a route whose partners all misbehave (silent,
reset, garbage, header floods, oversized, closing, smuggling extra bytes),
plus a burst of attacking clients (smuggling, floods, bad bytes, bad JSON,
oversized and unfinished bodies, hang-ups mid fan-out). After each cycle of
rounds the checks of tests/test_leaks.py hold: nothing in flight, none of
our timers pending, the pool within its idle allowance, and live objects by
type not growing from one cycle to the next.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from .configs import route_config
from .hostile import REFUSED, SECRET, request
from .leakcheck import grown, live_objects, our_pending_timers
from .loopback import raw_client, within

# Forty hostile rounds over real sockets: seconds.
pytestmark = pytest.mark.slow

ROUNDS_PER_CYCLE = 10
CYCLES = 4
FANOUTS_PER_ROUND = 4
NOISE = 40  # objects a type may gain over two cycles (~300 exchanges each)

FAULTS = ["/silent", "/reset-mid-body", "/garbage-status", "/huge-headers", "/huge-chunked",
          "/close-after-one", "/trailing-bytes", "/bad-chunked"]

ATTACKS = [data for data, _ in REFUSED.values()] + [
    request(path=b"/%ff"), request(path=b"/metrics"), request(body=b"[" * 60000),
    request(body=b"1" * 60000), request(body=b"{not json"), request(body=b" " * 70000),
    request(headers=b"X-Country: \xff\xfe\r\n"), request(headers=b"Host: a\r\n"),
    request(close=False) * 3 + request(),  # pipelined
    b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{",  # never finishes: 408
    b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n",
]


async def hostile_round(gw) -> None:
    fanouts = [Deferred.fromCoroutine(gw.post()) for _ in range(FANOUTS_PER_ROUND)]
    attacks = [raw_client(gw.address, data).closed for data in ATTACKS]
    hang_up = raw_client(gw.address, request(close=False), hang_up=True).closed
    results = await within(DeferredList(fanouts + attacks + [hang_up], consumeErrors=True), 10)
    assert all(ok for ok, _ in results), [r for ok, r in results if not ok][:1]
    for answer in [r for _, r in results[:FANOUTS_PER_ROUND]]:
        assert answer.code == 200
        assert {r["outcome"] for r in answer.json["results"]} <= {"ok", "timeout", "error",
                                                                  "too_large", "skipped"}


@pytest_twisted.ensureDeferred
async def test_hostile_rounds_leave_nothing_behind(raw_partner, make_gateway, logs):
    gw = make_gateway(route_config(
        # (no tail samples: they outlive their request by design; test_tail)
        {path.strip("/"): {"url": raw_partner.url(path), "timeout_ms": 30, "tail_sample": 0,
                           "max_response_bytes": 1000, "breaker_failures": 0,
                           "headers": {"X-Api-Key": SECRET}} for path in FAULTS},
        deadline_ms=1000, request_timeout_ms=100, max_body_bytes=65536))
    pool = gw.gateway.upstream.pool
    snapshots = []
    for _ in range(CYCLES):
        for _ in range(ROUNDS_PER_CYCLE):
            await hostile_round(gw)
        assert not gw.gateway.inflight and gw.gateway.admission.admitted == 0
        assert all(p.slots.inflight == 0 for p in gw.gateway.snapshot.partners.values())
        assert our_pending_timers() == []
        assert sum(len(c) for c in pool._connections.values()) <= pool.maxPersistentPerHost
        assert gw.site.open_connections == 0
        snapshots.append(live_objects())
    assert grown(snapshots, NOISE) == {}
