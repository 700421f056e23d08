"""``max_rps``: the token bucket on a fake clock (exact), what the gateway
does with a call past it, its share per worker, reloads, and one partner
capped over real loopback sockets."""

from __future__ import annotations

from twisted.internet.task import Clock

from txfanout import tap
from txfanout.config import PartnerConfig, parse
from txfanout.configview import config_view
from txfanout.gateway import Gateway
from txfanout.outcomes import CallResult
from txfanout.ratecap import TokenBucket
from txfanout.snapshot import PartnerState

from .configs import route_config
from .fakes import Network
from .test_config import errors_of
from .test_fanout_timing import RecordingUpstream, fanout, outcomes_of


def test_the_bucket_starts_full_with_a_tenth_of_a_second_and_refills_at_the_rate():
    clock = Clock()
    bucket = TokenBucket(40.0, clock)  # burst: 4 calls
    assert bucket.burst == 4.0
    for _ in range(4):
        assert bucket.ready(0.0)
        bucket.take()
    assert not bucket.ready(0.0)
    assert not bucket.ready(0.0125)  # half a token
    assert bucket.ready(0.025)  # one whole token, 25 ms later
    bucket.take()
    assert bucket.ready(10.0) and bucket.tokens == 4.0  # never more than the burst


def test_a_slow_rate_has_a_burst_of_one_call_and_a_clock_stepping_back_adds_nothing():
    clock = Clock()
    clock.advance(100.0)
    bucket = TokenBucket(0.5, clock)  # one call every 2 s
    assert bucket.burst == 1.0
    assert bucket.ready(100.0)
    bucket.take()
    assert not bucket.ready(40.0)  # the wall clock stepped back a minute
    assert not bucket.ready(41.5)
    assert bucket.ready(42.0)  # 2 s after the step: time counts from it


def _ok() -> CallResult:
    return CallResult("a", "ok", 200)


def capped(clock, max_rps, **extra):
    return PartnerState(PartnerConfig("a", "http://h/", max_rps=max_rps, **extra), clock)


def test_calls_past_max_rps_are_not_made_and_say_so():
    clock, upstream = Clock(), RecordingUpstream()
    partner = capped(clock, 20.0)  # burst 2, a token every 50 ms
    first = fanout(clock, upstream).run([partner] * 3, b"{}")
    assert len(upstream.calls) == 2  # its third call was refused at once
    assert partner.slots.inflight == 2
    clock.advance(0.05)
    later = fanout(clock, upstream, started=0.05).run([partner, partner], b"{}")
    assert len(upstream.calls) == 3
    for *_, d in upstream.calls:
        d.callback(_ok())
    assert outcomes_of(first) == ["ok", "ok", "rate_limited"]
    assert outcomes_of(later) == ["ok", "rate_limited"]
    [refused] = [r for r in later.result if r.outcome == "rate_limited"]
    assert (refused.status, refused.latency_ms, refused.error) == (None, 0.0,
                                                                   "partner at max_rps")
    assert partner.slots.inflight == 0


def test_a_rate_limited_call_is_no_failure_and_an_open_breaker_costs_no_token():
    clock, upstream = Clock(), RecordingUpstream()
    partner = capped(clock, 20.0, breaker_failures=1, breaker_probes=1)  # burst 2
    breaker = partner.breaker
    fanout(clock, upstream).run([partner, partner], b"{}")
    for _ in range(20):
        assert outcomes_of(fanout(clock, upstream).run([partner], b"{}")) == ["rate_limited"]
    assert breaker.state == "closed" and sum(breaker._judged) == 0  # not judged at all
    for *_, d in upstream.calls:
        d.callback(_ok())
    for _ in range(2):  # 2 failures of 4 calls: it opens
        breaker.record("error", None, breaker.epoch)
    assert breaker.state == "open"
    clock.advance(10.0)  # cool-down over; a full bucket: two tokens
    # Half-open: the one probe goes and takes a token; the next call is
    # refused by the breaker (open), and costs none.
    probe = fanout(clock, upstream, started=10.0).run([partner, partner], b"{}")
    assert len(upstream.calls) == 3
    upstream.calls[2][3].callback(_ok())
    assert outcomes_of(probe) == ["ok", "open"]
    assert breaker.state == "closed"
    fanout(clock, upstream, started=10.0).run([partner], b"{}")  # the token left
    assert len(upstream.calls) == 4


def test_a_call_waiting_for_a_slot_meets_the_cap_when_it_starts():
    clock, upstream = Clock(), RecordingUpstream()
    partner = capped(clock, 10.0, max_concurrency=1)  # burst 1
    fanout(clock, upstream).run([partner], b"{}")
    waiting = fanout(clock, upstream).run([partner], b"{}")
    clock.advance(0.05)
    upstream.calls[0][3].callback(_ok())  # its slot frees; half a token is not enough
    assert outcomes_of(waiting) == ["rate_limited"]
    assert len(upstream.calls) == 1 and partner.slots.inflight == 0


def test_bad_max_rps_values_are_refused_naming_the_key():
    for bad in (-1, "10", True, 1000001, float("nan"), float("inf")):
        assert errors_of(route_config({"a": {"url": "http://h/", "max_rps": bad}})) == [
            "partners.a.max_rps: must be a number from 0 to 1e+06 (0: no cap)"], bad
    config = parse(route_config({"a": {"url": "http://h/", "max_rps": 2.5},
                                 "b": {"url": "http://h/", "max_rps": 0},
                                 "c": {"url": "http://h/"}}))
    assert [config.partners[n].max_rps for n in "abc"] == [2.5, 0.0, 0.0]


def test_debug_config_shows_the_pacing_keys():
    view = config_view(parse(route_config({
        "a": {"url": "http://h/", "max_rps": 2.5, "adaptive_timeout": True},
        "b": {"url": "http://h/"}})))
    a, b = view["partners"]["a"], view["partners"]["b"]
    assert (a["max_rps"], a["adaptive_timeout"]) == (2.5, True)
    assert (b["max_rps"], b["adaptive_timeout"]) == (0.0, False)


def test_each_worker_enforces_its_share():
    config = parse(route_config({"a": {"url": "http://h/", "max_rps": 100},
                                 "b": {"url": "http://h/", "max_rps": 3},
                                 "c": {"url": "http://h/"}}))
    gateway = Gateway(Clock(), config, workers=4)
    a, b, c = (gateway.snapshot.partners[n] for n in "abc")
    assert (a.bucket.rate, a.bucket.burst) == (25.0, 2.5)
    assert (b.bucket.rate, b.bucket.burst) == (0.75, 1.0)  # fractions kept; a burst of one
    assert c.bucket is None
    gateway.reconfigure(parse(route_config({"a": {"url": "http://h/", "max_rps": 200}})))
    assert gateway.snapshot.partners["a"].bucket.rate == 50.0  # still a quarter


def test_workers_tell_each_worker_its_share(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nlisten = "tcp:0"\nadmin = "tcp:0:interface=127.0.0.1"\n'
                    '[partners.a]\nurl = "http://127.0.0.1:1/"\nmax_rps = 90\n'
                    '[routes.bid]\npartners = ["a"]\n')
    parent = tap.Options()
    parent.parseOptions(["--config", str(path), "--workers", "3"])
    args = parent.worker_args(2)
    assert args[args.index("--worker-count") + 1] == "3"
    worker = tap.Options()
    worker.parseOptions(args[1:args.index("--inherit-fd")])  # after the command's name
    top = tap.makeService(worker)
    [gateway] = [s.gateway for s in top if isinstance(s, tap.GatewayService)]
    assert gateway.snapshot.partners["a"].bucket.rate == 30.0


def test_a_reload_keeps_the_bucket_of_a_partner_whose_max_rps_did_not_change():
    gateway = Gateway(Clock(), parse(route_config({
        "same": {"url": "http://h/", "max_rps": 10},
        "other_key": {"url": "http://h/", "max_rps": 10},
        "new_rate": {"url": "http://h/", "max_rps": 10}})))
    before = gateway.snapshot.partners
    for state in before.values():
        state.bucket.take()  # an empty bucket, which a reload must not refill
    gateway.reconfigure(parse(route_config({
        "same": {"url": "http://h/", "max_rps": 10},
        "other_key": {"url": "http://h/", "max_rps": 10, "timeout_ms": 100},
        "new_rate": {"url": "http://h/", "max_rps": 20}})))
    after = gateway.snapshot.partners
    assert after["same"] is before["same"]
    assert after["other_key"] is not before["other_key"]
    assert after["other_key"].bucket is before["other_key"].bucket
    assert after["new_rate"].bucket is not before["new_rate"].bucket
    assert (after["new_rate"].bucket.rate, after["new_rate"].bucket.tokens) == (20.0, 2.0)
    gateway.reconfigure(parse(route_config({"same": {"url": "http://h/"}})))
    assert gateway.snapshot.partners["same"].bucket is None  # the cap is gone


def test_a_capped_partner_is_counted_and_the_rest_still_answer(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"capped": {"url": partner.url("/ok"), "max_rps": 10},
                                   "free": {"url": partner.url("/ok")}}))
    assert gw.post().outcomes() == {"capped": "ok", "free": "ok"}
    answer = gw.post()  # no time has passed on the fake clock: no token
    assert answer.code == 200
    assert answer.outcomes() == {"capped": "rate_limited", "free": "ok"}
    assert answer.json["complete"] is False
    assert partner.seen == 3
    calls = "txfanout_partner_calls_total"
    assert gw.value(calls, partner="capped", outcome="rate_limited") == 1
    assert gw.value(calls, partner="capped", outcome="ok") == 1
    assert gw.value("txfanout_partner_call_duration_seconds_count", partner="capped") == 1
    assert gw.value("txfanout_partner_max_rps", partner="capped") == 10.0
    assert gw.value("txfanout_partner_max_rps", partner="free") is None
    net.advance(0.15)  # a token (and a half: the burst is one)
    assert gw.post().outcomes() == {"capped": "ok", "free": "ok"}


def test_a_request_whose_only_partner_is_capped_gets_a_503_and_the_limit_holds(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"capped": {"url": partner.url("/ok"), "max_rps": 1}}))
    limit = gw.gateway.admission.limit.current
    assert gw.post().code == 200
    for _ in range(5):
        refused = gw.post()
        assert refused.code == 503 and refused.header("Retry-After") == "1"
    assert gw.value("txfanout_shed_total", reason="partners_unavailable") == 5
    assert gw.gateway.admission.limit.current == limit  # not a cut of the in-flight limit
    assert gw.gateway.snapshot.partners["capped"].breaker.state == "closed"
    assert partner.seen == 1


async def test_over_loopback_a_capped_partner_is_called_once_per_token(partner, make_gateway):
    gw = make_gateway(route_config({"capped": {"url": partner.url("/ok"), "max_rps": 0.001},
                                    "free": {"url": partner.url("/ok")}}))
    first = await gw.post()
    assert first.outcomes() == {"capped": "ok", "free": "ok"}
    for _ in range(3):  # the next token is 1000 s away
        assert (await gw.post()).outcomes() == {"capped": "rate_limited", "free": "ok"}
    assert partner.seen == 1 + 4
