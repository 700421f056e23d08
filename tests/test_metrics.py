"""Each metric moves when its cause happens: partner calls and a blocked
reactor in memory on a fake clock (tests/fakes.py), where a timed-out call
takes its timeout exactly; the process and resolver metrics on the real
reactor."""

from __future__ import annotations

import platform
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from txfanout.config import ServerConfig
from txfanout.budget import Budget
from txfanout.fanout import Fanout
from txfanout.inflight import OverdueWatch
from txfanout.top import Scrape

from .configs import route_config
from .fakes import Network
from .loopback import raw_client, within


def one(partner, path, **extra):
    return {"url": partner.url(path), **extra}


def value(gw, name, **labels):
    """A sample of the gateway's registry (None when the series is absent)."""
    return gw.gateway.metrics.registry.get_sample_value(name, labels)


def calls(gw, partner, outcome):
    return value(gw, "txfanout_partner_calls_total", partner=partner, outcome=outcome)


def test_partner_outcomes_and_durations_are_counted(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({
        "fast": one(partner, "/ok"),
        "five-hundred": one(partner, "/status/503"),
        "slow": one(partner, "/delay/2000", timeout_ms=100),
        "reset": one(partner, "/reset"),
        "refused": {"url": net.refused_url()},
        "big": one(partner, "/big/5000", max_response_bytes=1000),
    }))
    for name in ("fast", "slow", "big"):
        assert calls(gw, name, "ok") == 0.0  # the series exist before any traffic
    gw.post()
    gw.post()
    assert calls(gw, "fast", "ok") == 2
    assert calls(gw, "five-hundred", "http_error") == 2
    assert calls(gw, "slow", "timeout") == 2
    assert calls(gw, "slow", "ok") == 0
    assert calls(gw, "reset", "error") == 2
    assert calls(gw, "refused", "error") == 2
    assert calls(gw, "big", "too_large") == 2
    # The timed-out calls took their 100 ms; the fast ones no time at all.
    hist = "txfanout_partner_call_duration_seconds"
    assert value(gw, hist + "_count", partner="slow") == 2
    assert value(gw, hist + "_sum", partner="slow") == pytest.approx(0.2)
    assert value(gw, hist + "_bucket", partner="slow", le="0.075") == 0
    assert value(gw, hist + "_bucket", partner="slow", le="0.25") == 2
    assert value(gw, hist + "_bucket", partner="fast", le="0.075") == 2


def test_shed_skipped_and_cancelled_calls(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({
        "hang": one(partner, "/hang", timeout_ms=5000, max_concurrency=1),
        "ok": one(partner, "/ok"),
    }, deadline_ms=10000))
    client = gw.client(b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    net.run()
    assert partner.open_requests
    # The hanging partner is at its cap: the next request's call waits for a
    # slot as long as its budget allows, then is shed.
    answer = gw.post(headers={"X-Fanout-Deadline-Ms": "200"})
    assert answer.outcomes() == {"hang": "shed", "ok": "ok"}
    assert calls(gw, "hang", "shed") == 1
    # Shed calls were not made: no duration for them.
    assert value(gw, "txfanout_partner_call_duration_seconds_count", partner="hang") == 0
    assert value(gw, "txfanout_partner_inflight", partner="hang") == 1
    # Too little budget left to call anyone: skipped.
    answer = gw.post(headers={"X-Fanout-Deadline-Ms": "8"})
    assert answer.outcomes() == {"hang": "skipped", "ok": "skipped"}  # no budget for anyone
    assert calls(gw, "ok", "skipped") == 1
    # The first client goes away: its call is cancelled, its request counted as 499.
    client.close()
    net.run()
    assert partner.lost_count == 1
    assert calls(gw, "hang", "cancelled") == 1
    assert value(gw, "txfanout_partner_inflight", partner="hang") == 0
    assert value(gw, "txfanout_requests_total", route="bid", code="499") == 1
    # Answers sent: the shed one and the skipped one; not the one nobody took.
    assert value(gw, "txfanout_answers_total", route="bid", complete="false") == 2


@pytest_twisted.ensureDeferred
async def test_requests_by_route_and_code_with_bounded_labels(partner, make_gateway):
    gw = make_gateway(route_config({"a": one(partner, "/ok")}, max_body_bytes=100))
    assert (await gw.post()).code == 200
    assert (await gw.post(method="GET")).code == 405
    assert (await gw.post(body=b"{nope")).code == 400
    for i in range(20):
        assert (await gw.post(f"/no-such-route-{i}")).code == 404
    client = raw_client(gw.address, b"POST /bid HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 100000\r\n\r\n")
    await within(client.closed)
    total = "txfanout_requests_total"
    assert value(gw, total, route="bid", code="200") == 1
    assert value(gw, total, route="bid", code="405") == 1
    assert value(gw, total, route="bid", code="400") == 1
    assert value(gw, total, route="unknown", code="404") == 20
    assert value(gw, total, route="bid", code="413") == 1  # its path came before its body
    scrape = Scrape.parse(gw.gateway.metrics.exposition().decode(), 0.0)
    assert {d["route"] for d, _ in scrape.values(total)} == {"bid", "unknown"}
    assert {d["route"] for d, _ in scrape.values("txfanout_request_duration_seconds_count")} \
        == {"bid", "unknown"}
    assert value(gw, "txfanout_request_duration_seconds_count", route="bid") == 3
    assert value(gw, "txfanout_request_duration_seconds_bucket", route="bid", le="1.0") == 3


def test_admission_shed_and_inflight(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"hang": one(partner, "/hang")},
                                  max_inflight=1, deadline_ms=2000))
    assert value(gw, "txfanout_shed_total", reason="max_inflight") == 0
    held = gw.send()
    net.run()
    assert value(gw, "txfanout_inflight_requests") == 1
    assert value(gw, "txfanout_partner_inflight", partner="hang") == 1
    assert gw.post().code == 503
    assert gw.post().code == 503
    assert value(gw, "txfanout_shed_total", reason="max_inflight") == 2
    assert value(gw, "txfanout_requests_total", route="bid", code="503") == 2
    gw.answer(held)
    assert value(gw, "txfanout_inflight_requests") == 0
    assert value(gw, "txfanout_partner_inflight", partner="hang") == 0
    assert calls(gw, "hang", "timeout") == 1


def test_upstream_connections(net: Network):
    partner, other = net.partner(), net.partner()
    gw = net.gateway(route_config({"ok": one(partner, "/ok"),
                                   "hang": one(other, "/hang", timeout_ms=100)}))
    a = f"http://127.0.0.1:{partner.port.getHost().port}"
    b = f"http://127.0.0.1:{other.port.getHost().port}"
    conns = "txfanout_upstream_connections"
    assert gw.post().outcomes() == {"ok": "ok", "hang": "timeout"}
    assert other.lost_count == 1
    # The answered call's connection went back to the pool; the timed-out
    # one was aborted.
    assert value(gw, conns + "_opened_total", upstream=a) == 1
    assert value(gw, conns, upstream=a, state="idle") == 1
    assert value(gw, conns, upstream=a, state="active") == 0
    assert value(gw, conns + "_opened_total", upstream=b) == 1
    assert value(gw, conns + "_closed_total", upstream=b) == 1
    assert value(gw, conns, upstream=b, state="active") == 0
    assert value(gw, "txfanout_partner_upstream", partner="hang", upstream=b) == 1
    # While a call hangs its connection is active; the pooled one is reused.
    held = gw.send()
    net.run()
    assert value(gw, conns, upstream=b, state="active") == 1
    gw.answer(held)
    assert value(gw, conns + "_opened_total", upstream=a) == 1
    assert value(gw, conns + "_opened_total", upstream=b) == 2


@pytest_twisted.ensureDeferred
async def test_a_partner_and_its_connections_name_one_upstream(partner, make_gateway,
                                                                local_names):
    # Host names ignore case, label values do not: both series must spell the
    # upstream alike, or PromQL joins on it (and txfanout top) find nothing.
    local_names.known["partner.test"] = "127.0.0.1"
    port = partner.port.getHost().port
    gw = make_gateway(route_config({"a": {"url": f"http://Partner.Test:{port}/ok"}}))
    assert (await gw.post()).outcomes() == {"a": "ok"}
    scrape = Scrape.parse(gw.gateway.metrics.exposition().decode(), 0.0)
    [(partner_of, _)] = scrape.values("txfanout_partner_upstream", partner="a")
    [(opened, count)] = scrape.values("txfanout_upstream_connections_opened_total")
    assert partner_of["upstream"] == opened["upstream"] == f"http://Partner.Test:{port}"
    assert count == 1


def test_reactor_lag_is_measured(net: Network):
    gw = net.gateway(route_config({"ok": one(net.partner(), "/ok")}))
    lag = gw.gateway.lag
    lag.interval = 0.005
    lag.start()
    try:
        net.clock.callLater(0.001, net.busy, 0.06)  # a reactor blocked for 60 ms
        net.advance(0.01)
        assert lag.lag == pytest.approx(0.056)  # the probe due at 5 ms ran at 61 ms
        assert value(gw, "txfanout_reactor_lag_seconds") == lag.lag
    finally:
        lag.stop()


@pytest_twisted.ensureDeferred
async def test_overdue_inflight_counts_a_leaked_request(partner, make_gateway):
    gw = make_gateway(route_config({"ok": one(partner, "/ok")}))
    assert value(gw, "txfanout_overdue_inflight") == 0
    # A fan-out nobody ends (a leak), whose deadline passed 2 s ago.
    now = reactor.seconds()
    leaked = Fanout(reactor, gw.gateway.upstream, ServerConfig(), "leak-1", "bid",
                    Budget(now - 2.5, now - 2.0, 5, 5))
    gw.gateway.inflight.add(leaked)
    try:
        assert value(gw, "txfanout_overdue_inflight") == 1
    finally:
        gw.gateway.inflight.discard(leaked)
    assert value(gw, "txfanout_overdue_inflight") == 0


def test_overdue_watch_logs_each_request_once():
    clock = Clock()
    inflight: set = set()
    watch = OverdueWatch(clock, inflight, grace=1.0, interval=0.5)
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        fanout = Fanout(clock, None, ServerConfig(), "rid-7", "bid", Budget(0.0, 0.5, 5, 5))
        fanout.partners, fanout.results, fanout.phases = ["a"], [None], [None]
        inflight.add(fanout)
        watch.start()
        clock.advance(0.5)
        clock.advance(0.5)
        clock.advance(0.5)
        assert watch.count == 0  # 1 s past the deadline: within the grace
        clock.advance(0.5)
        assert watch.count == 1
        clock.advance(0.5)
        assert watch.count == 1
        warnings = [e for e in events if e.get("id") == "rid-7"]
        assert len(warnings) == 1  # once, not at every scan
        assert warnings[0]["route"] == "bid" and warnings[0]["age_ms"] == 2000.0
        assert "a=waiting-slot" in warnings[0]["partners"]
        inflight.discard(fanout)
        clock.advance(0.5)
        assert watch.count == 0
        watch.stop()
        assert not clock.getDelayedCalls()
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_process_and_gc_collectors_and_separate_registries(partner, make_gateway):
    a = make_gateway(route_config({"ok": one(partner, "/ok")}))
    b = make_gateway(route_config({"ok": one(partner, "/ok")}))
    await a.post()
    assert value(a, "txfanout_requests_total", route="bid", code="200") == 1
    assert value(b, "txfanout_requests_total", route="bid", code="200") is None
    assert value(a, "process_resident_memory_bytes") > 1e6
    assert value(a, "process_open_fds") > 0
    assert value(a, "process_cpu_seconds_total") > 0
    gc_total = value(a, "python_gc_collections_total", generation="0")
    # prometheus-client's GCCollector only reports on CPython (PyPy has no generations).
    assert (gc_total is not None) == (platform.python_implementation() == "CPython")
    # PyPy's collector time is the gateway's own family there, and only there.
    pypy_gc = value(a, "txfanout_pypy_gc_seconds_total")
    if platform.python_implementation() == "PyPy":
        assert pypy_gc is not None and pypy_gc > 0
    else:
        assert pypy_gc is None
    info = {"implementation": platform.python_implementation(),
            "major": str(sys.version_info.major), "minor": str(sys.version_info.minor),
            "patchlevel": str(sys.version_info.micro), "version": platform.python_version()}
    assert value(a, "python_info", **info) == 1


@pytest_twisted.ensureDeferred
async def test_circuit_open_gauge_follows_the_breaker(partner, make_gateway):
    gw = make_gateway(route_config({
        "bad": one(partner, "/status/500", breaker_failures=2, breaker_cooldown_ms=60000)}))
    assert value(gw, "txfanout_partner_circuit_open", partner="bad") == 0
    for _ in range(2):
        await gw.post()
    assert value(gw, "txfanout_partner_circuit_open", partner="bad") == 1
    assert (await gw.post()).code == 503  # no partner left to call
    assert calls(gw, "bad", "open") == 1
    assert value(gw, "txfanout_shed_total", reason="partners_unavailable") == 1
