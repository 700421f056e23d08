"""After mixed and hostile traffic, the gateway holds nothing for it: in
memory on a fake clock (tests/fakes.py), where the timers left pending are
all there is to see. The soaks over real sockets, which also count live
objects over thousands of requests, are test_leaks and test_hostile_leaks
(slow)."""

from __future__ import annotations

from typing import Any

from .configs import route_config
from .fakes import FakeGateway, Network
from .hostile import REFUSED, SECRET, request

FAULTS = ["/silent", "/reset-mid-body", "/garbage-status", "/huge-headers", "/huge-chunked",
          "/close-after-one", "/trailing-bytes", "/bad-chunked"]


def our_timers(net: Network) -> list[str]:
    return [repr(c) for c in net.clock.getDelayedCalls()
            if getattr(c.func, "__module__", "").startswith("txfanout")]


def assert_settled(gw: FakeGateway) -> None:
    gateway = gw.gateway
    assert not gateway.inflight and gateway.admission.admitted == 0
    assert all(p.slots.inflight == 0 for p in gateway.snapshot.partners.values())
    assert our_timers(gw.net) == []
    pool = gateway.upstream.pool
    assert all(len(idle) <= pool.idle_caps.get(key, pool.maxPersistentPerHost)
               for key, idle in pool.idle_connections().items())
    assert gw.site.open_connections == 0


def post_all(gw: FakeGateway, count: int, hang_up_every: int) -> list[Any]:
    """``count`` requests, each on its own connection; every
    ``hang_up_every``-th client hangs up as soon as it has sent."""
    clients = []
    for n in range(count):
        client = gw.send()
        if n % hang_up_every == 0:
            client.close()
        clients.append(client)
    gw.net.until(lambda: all(c.closed for c in clients))
    return [c for n, c in enumerate(clients) if n % hang_up_every]


def test_answers_timeouts_hangs_resets_and_hang_ups_leave_nothing_behind(net: Network, logs):
    partner = net.partner()
    gw = net.gateway(route_config({
        "fast": {"url": partner.url("/ok"), "breaker_failures": 0},
        "slow": {"url": partner.url("/delay/1000"), "timeout_ms": 20, "breaker_failures": 0},
        "hang": {"url": partner.url("/hang"), "timeout_ms": 20, "breaker_failures": 0},
        "reset": {"url": partner.url("/reset"), "breaker_failures": 0},
    }, deadline_ms=100, max_inflight=1000, adaptive_inflight=False))
    for _ in range(2):
        answered = post_all(gw, 40, hang_up_every=5)
        assert [c.answers()[0].outcomes() for c in answered] == [
            {"fast": "ok", "slow": "timeout", "hang": "timeout", "reset": "error"}] * 32
        assert_settled(gw)
    assert gw.value("txfanout_requests_total", route="bid", code="499") == 16


def test_hostile_partners_and_clients_leave_nothing_behind(net: Network, logs):
    raw = net.raw_partner()
    gw = net.gateway(route_config(
        {path.strip("/"): {"url": raw.url(path), "timeout_ms": 30, "max_response_bytes": 1000,
                           "breaker_failures": 0, "headers": {"X-Api-Key": SECRET}}
         for path in FAULTS},
        deadline_ms=1000, request_timeout_ms=100, max_body_bytes=65536))
    attacks = [data for data, _ in REFUSED.values()] + [
        request(body=b"[" * 60000), request(body=b" " * 70000),
        request(close=False) * 3 + request(),  # pipelined
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{",  # never ends: 408
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n"
        b"Content-Length: 9999999\r\n\r\n"]
    for _ in range(2):
        clients = [gw.client(data) for data in attacks]
        answered = post_all(gw, 8, hang_up_every=4)
        net.until(lambda: all(c.closed for c in clients))
        for client in answered:
            [answer] = client.answers()
            assert answer.code == 200 and SECRET.encode() not in answer.body
            assert set(answer.outcomes().values()) <= {"ok", "timeout", "error", "too_large"}
        assert_settled(gw)
