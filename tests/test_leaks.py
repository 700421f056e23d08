"""Nothing leaks: cycles of mixed traffic leave no trace behind.

Each cycle sends a few thousand requests through real partners that answer,
time out, hang and reset, with some clients hanging up early. After each
cycle nothing is in flight, none of our timers is pending, the pool holds no
more than its idle allowance, and the live objects by type have not grown.

The objects are counted with every idle connection closed (the test's and the
gateway's) and seen closed by both servers, so that the count is what the
gateway keeps, not how many keep-alive connections happened to be open. It
holds on CPython and PyPy alike: only objects CPython's collector tracks are
counted (PyPy's ``gc.get_objects()`` also lists ints and strings, the
snapshots' own among them), and the cancelled timers Twisted keeps in its heap
until it compacts it (up to 50, two bound methods each) are left out.
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.web.client import Agent, HTTPConnectionPool

from .configs import route_config
from .leakcheck import grown, live_objects, our_pending_timers
from .loopback import closed_all, raw_client, within

# Thousands of requests over real sockets, four times over: seconds.
pytestmark = pytest.mark.slow

REQUESTS_PER_CYCLE = 1500
CONCURRENCY = 40
HANG_UP_EVERY = 10
CYCLES = 4
NOISE = 60  # objects a type may gain over two cycles of 1,500 requests
ATOMS = (int, float, str, bytes)  # never tracked by CPython's collector


async def run_cycle(gw, agent) -> Counter[int]:
    codes: Counter[int] = Counter()
    url = gw.url().encode()
    hang_ups = []

    async def worker(index: int) -> None:
        for n in range(index, REQUESTS_PER_CYCLE, CONCURRENCY):
            if n % HANG_UP_EVERY == 0:
                client = raw_client(gw.address, b"POST /bid HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 2\r\n\r\n{}", hang_up=True)
                hang_ups.append(client.closed)
                continue
            response = await agent.request(b"POST", url)
            await treq.content(response)
            codes[response.code] += 1

    workers = [Deferred.fromCoroutine(worker(i)) for i in range(CONCURRENCY)]
    results = await within(DeferredList(workers + hang_ups, consumeErrors=True), 60)
    assert all(ok for ok, _ in results), [r for ok, r in results if not ok][:1]
    return codes


@pytest_twisted.ensureDeferred
async def test_memory_and_state_settle_after_every_cycle(partner, make_gateway):
    gw = make_gateway(route_config({
        "fast": {"url": partner.url("/ok"), "breaker_failures": 0},
        # A tail sample outlives its request by design (up to twice the
        # timeout, holding its slot): test_tail checks that it ends.
        "slow": {"url": partner.url("/delay/1000"), "timeout_ms": 20, "breaker_failures": 0,
                 "tail_sample": 0},
        "hang": {"url": partner.url("/hang"), "timeout_ms": 20, "breaker_failures": 0,
                 "tail_sample": 0},
        "reset": {"url": partner.url("/reset"), "breaker_failures": 0},
    }, deadline_ms=100, max_inflight=1000, adaptive_inflight=False))  # every request served
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = CONCURRENCY
    agent = Agent(reactor, pool=pool)
    idle_allowance = gw.gateway.upstream.pool.maxPersistentPerHost
    snapshots = []
    try:
        for _ in range(CYCLES):
            codes = await run_cycle(gw, agent)
            assert codes == {200: REQUESTS_PER_CYCLE - REQUESTS_PER_CYCLE // HANG_UP_EVERY}
            assert not gw.gateway.inflight and gw.gateway.admission.admitted == 0
            # Only the open connections' timeouts wait (deadlines.py): no request's.
            assert [t for t in our_pending_timers() if "_Deadlines._run" not in t] == []
            assert all(p.slots.inflight == 0 for p in gw.gateway.snapshot.partners.values())
            idle = sum(len(c) for c in gw.gateway.upstream.pool._connections.values())
            assert idle <= idle_allowance
            # Close every connection so that each snapshot starts from the same
            # place: how many stay pooled varies from cycle to cycle.
            await pool.closeCachedConnections()
            await gw.gateway.upstream.pool.closeCachedConnections()
            await within(gatherResults([closed_all(gw.site), closed_all(partner)]))
            # Nor theirs, once they are closed.
            assert our_pending_timers() == []
            snapshots.append(live_objects())
    finally:
        await pool.closeCachedConnections()
    # The first cycle warms caches up; after it, nothing may keep growing.
    assert grown(snapshots, NOISE) == {}
