"""``adaptive_timeout``: the window and its effective timeout, calls on a
fake clock (a partner that degrades, one that slows as a whole, calls a
client's deadline cut), reloads, the gauge, and the timeout a real partner
is told over loopback."""

from __future__ import annotations

from twisted.internet.task import Clock

from txfanout import adaptive, advice
from txfanout.adaptive import AdaptiveTimeout
from txfanout.config import PartnerConfig, parse
from txfanout.gateway import Gateway
from txfanout.outcomes import CallResult
from txfanout.snapshot import PartnerState

from .configs import route_config
from .fakes import Network
from .loopback import within
from .test_config import errors_of
from .test_fanout_timing import RecordingUpstream, fanout


def filled(latency_ms: float, cap_ms: int = 300, n: int = adaptive.MIN_SAMPLES
           ) -> AdaptiveTimeout:
    window = AdaptiveTimeout(cap_ms)
    for _ in range(n):
        window.record(latency_ms)
    return window


def test_timeout_ms_until_enough_samples_then_one_and_a_half_times_the_p99():
    window = filled(40.0, n=adaptive.MIN_SAMPLES - 1)
    assert window.timeout_ms == 300.0
    window.record(40.0)
    assert window.timeout_ms == 60.0
    assert filled(4.0).timeout_ms == 20.0  # the floor
    assert filled(1000.0).timeout_ms == 300.0  # never above timeout_ms
    assert filled(4.0, cap_ms=10).timeout_ms == 10.0  # nor the floor above it
    window = filled(40.0, n=197)
    for _ in range(3):  # the p99 of 200: the third largest
        window.record(100.0)
    assert window.timeout_ms == 150.0


def test_the_window_keeps_the_last_200_samples_and_no_more():
    window = filled(150.0, n=adaptive.WINDOW)
    assert window.timeout_ms == 225.0
    for _ in range(adaptive.WINDOW - 2):
        window.record(10.0)
    assert len(window._samples) == adaptive.WINDOW
    assert window.timeout_ms == 225.0  # two of the old ones still in: the p99 is one
    for _ in range(1000):
        window.record(10.0)
    assert len(window._samples) == adaptive.WINDOW
    assert window.timeout_ms == 20.0  # the old ones are gone


def test_every_twentieth_call_gets_the_whole_timeout():
    window = filled(10.0)
    timeouts = [window.for_call() for _ in range(40)]
    assert timeouts.count(300.0) == 2 and timeouts[19] == timeouts[39] == 300.0
    assert set(timeouts) == {20.0, 300.0}


def test_bad_adaptive_timeout_values_are_refused_naming_the_key():
    for bad in ("yes", 1, 0):
        assert errors_of(route_config({"a": {"url": "http://h/", "adaptive_timeout": bad}})) \
            == ["partners.a.adaptive_timeout: must be true or false"], bad


# -- calls, on a fake clock --


class Calls:
    """A partner with adaptive_timeout and a breaker, called one request at a
    time; the test says how each call ends."""

    def __init__(self, deadline_ms: int = 500) -> None:
        self.clock, self.upstream = Clock(), RecordingUpstream()
        self.partner = PartnerState(PartnerConfig(
            "a", "http://h/", timeout_ms=300, adaptive_timeout=True, breaker_failures=5), self.clock)
        self.deadline_ms = deadline_ms

    def call(self, latency_ms: float | None) -> float:
        """One call that answers ok after ``latency_ms`` if its timeout
        allows (else times out); the timeout it had (ms)."""
        now = self.clock.seconds()
        fanout(self.clock, self.upstream, started=now,
               deadline_ms=self.deadline_ms).run([self.partner], b"{}")
        *_, timeout_s, headers, d = self.upstream.calls[-1]
        assert headers[b"X-Fanout-Deadline-Ms"] == [b"%d" % (timeout_s * 1000.0)]  # told
        timeout_ms = round(timeout_s * 1000.0, 6)
        if latency_ms is not None and latency_ms <= timeout_ms:
            d.callback(CallResult("a", "ok", 200, latency_ms))
        else:
            d.callback(CallResult("a", "timeout", None, timeout_ms))
        self.clock.advance(0.01)  # the breaker weighs the last 10 s: all of them
        return timeout_ms

    @property
    def timeout_ms(self) -> float:
        return self.partner.timeout_ms


def test_a_partner_that_degrades_gets_a_shorter_timeout_and_keeps_it():
    calls = Calls()
    for _ in range(adaptive.MIN_SAMPLES):
        assert calls.call(40.0) == 300.0
    assert calls.timeout_ms == 60.0
    # Now half its calls hang: they end at 60 ms, not 300, and do not push
    # the timeout back up (but for the probes, which get the whole 300 ms).
    given = [calls.call(40.0 if n % 2 else None) for n in range(200)]
    assert calls.timeout_ms == 60.0
    assert given.count(300.0) == 10 and set(given) == {60.0, 300.0}


def test_a_partner_that_hangs_every_call_opens_its_breaker_on_the_probes():
    calls = Calls()
    for _ in range(adaptive.MIN_SAMPLES):
        calls.call(40.0)
    calls.clock.advance(10.0)  # the breaker forgets those answers
    given = []
    while calls.partner.breaker.state == "closed":
        given.append(calls.call(None))
        assert len(given) <= 100, "the breaker never opened"
    # It judged only the calls with the whole timeout: the 5th probe opened it.
    assert given.count(300.0) == 5 and given[-1] == 300.0


def test_a_partner_that_slows_as_a_whole_is_followed_and_its_breaker_stays_closed():
    calls = Calls()
    for _ in range(adaptive.WINDOW):
        calls.call(40.0)
    assert calls.timeout_ms == 60.0
    calls.clock.advance(10.0)  # the breaker forgets those answers
    # Every call now takes 150 ms: past 60 ms, only the probes see an answer;
    # 3 of them move the p99 of 200.
    given = []
    while calls.timeout_ms < 150.0:
        given.append(calls.call(150.0))
        assert len(given) <= 3 * adaptive.PROBE_EVERY, "the timeout never caught up"
    assert calls.timeout_ms == 225.0 and given.count(300.0) == 3
    # The timeouts at 60 ms were the gateway's cut, not the partner's failure.
    assert calls.partner.breaker.state == "closed"
    assert calls.call(150.0) == 225.0  # and the calls answer again


def test_calls_a_clients_deadline_cut_neither_shrink_nor_grow_it():
    calls = Calls(deadline_ms=40)  # 35 ms left for each call: less than 300
    for _ in range(2 * adaptive.MIN_SAMPLES):
        assert calls.call(4.0) == 35.0
    assert calls.partner.adaptive._samples == []  # quick answers of cut calls: no evidence
    calls.deadline_ms = 500
    for _ in range(adaptive.MIN_SAMPLES):
        calls.call(40.0)
    assert calls.timeout_ms == 60.0
    calls.deadline_ms = 40  # left: 35 ms, under the 60 ms timeout
    for _ in range(100):
        calls.call(30.0)
    assert len(calls.partner.adaptive._samples) == adaptive.MIN_SAMPLES
    assert calls.timeout_ms == 60.0


def test_a_partner_the_deadline_never_gives_its_whole_timeout_is_warned_of():
    config = parse(route_config({"long": {"url": "http://h/", "timeout_ms": 496,
                                          "adaptive_timeout": True},
                                 "fits": {"url": "http://h/", "timeout_ms": 495,
                                          "adaptive_timeout": True}}, deadline_ms=500))
    assert advice.warnings(config) == [
        "partners.long.adaptive_timeout: never adapts, as no call gets its whole timeout_ms "
        "(496 ms; server.deadline_ms less reserve_ms leaves 495 ms)"]


def test_without_the_key_nothing_adapts():
    clock = Clock()
    partner = PartnerState(PartnerConfig("a", "http://h/", timeout_ms=300), clock)
    assert partner.adaptive is None and partner.timeout_ms == 300


# -- reloads, the gauge, the partner's view --


def test_a_reload_keeps_the_window_while_the_key_stays_on():
    gateway = Gateway(Clock(), parse(route_config({
        "a": {"url": "http://h/", "adaptive_timeout": True},
        "b": {"url": "http://h/", "adaptive_timeout": True}})))
    before = gateway.snapshot.partners
    for _ in range(adaptive.MIN_SAMPLES):
        before["a"].adaptive.record(100.0)
        before["b"].adaptive.record(100.0)
    assert before["a"].timeout_ms == 150.0
    gateway.reconfigure(parse(route_config({
        "a": {"url": "http://h/", "adaptive_timeout": True, "timeout_ms": 120},
        "b": {"url": "http://h/", "adaptive_timeout": True}})))
    after = gateway.snapshot.partners
    assert after["b"] is before["b"]
    assert after["a"].timeout_ms == 120.0  # the window kept, under the new cap
    gateway.reconfigure(parse(route_config({"a": {"url": "http://h/"}})))
    gateway.reconfigure(parse(route_config({"a": {"url": "http://h/",
                                                  "adaptive_timeout": True}})))
    assert gateway.snapshot.partners["a"].timeout_ms == 300.0  # off and on: a fresh start


def test_the_gauge_shows_each_partners_timeout_now(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({
        "adaptive": {"url": partner.url("/delay/10"), "adaptive_timeout": True},
        "fixed": {"url": partner.url("/delay/10"), "timeout_ms": 250}}))
    gauge = "txfanout_partner_timeout_seconds"
    assert gw.value(gauge, partner="adaptive") == 0.3
    assert gw.value(gauge, partner="fixed") == 0.25
    for _ in range(adaptive.MIN_SAMPLES):
        assert gw.post().outcomes() == {"adaptive": "ok", "fixed": "ok"}
    assert gw.value(gauge, partner="adaptive") == 0.02  # 15 ms: the floor
    assert gw.value(gauge, partner="fixed") == 0.25


async def test_over_loopback_the_partner_is_told_its_shorter_timeout(partner, make_gateway):
    gw = make_gateway(route_config({"echo": {"url": partner.url("/echo"), "timeout_ms": 400,
                                             "adaptive_timeout": True}}))
    for _ in range(adaptive.MIN_SAMPLES + adaptive.UPDATE_EVERY):  # 60: the 60th a probe
        assert (await gw.post()).outcomes() == {"echo": "ok"}
    told = gw.gateway.snapshot.partners["echo"].timeout_ms
    assert told < 400.0
    # What the partner received, not its echo: the shorter timeout is a
    # wall-clock one, and a call that misses it (a cold PyPy did, in CI)
    # was still told it.
    arrived = partner.wait_request()
    await gw.post()
    request = await within(arrived)
    assert request.requestHeaders.getRawHeaders(b"X-Fanout-Deadline-Ms") == [b"%d" % told]
