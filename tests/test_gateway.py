"""One request end to end: a client, the gateway and its partners, in
memory on a fake clock (tests/fakes.py), where a deadline is kept to the
millisecond and a call cut at its timeout is seen aborting its connection."""

from __future__ import annotations

import json

import pytest

from txfanout.gateway import Gateway

from .configs import route_config
from .fakes import Network, http_request


def one(partner, path, **extra):
    return {"url": partner.url(path), **extra}


def aborted_calls(net: Network, partner) -> int:
    """Connections to ``partner`` the gateway aborted (not closed gracefully)."""
    return sum(1 for link in net.links_to(partner.port) if link.client.aborted)


def test_every_outcome_of_a_call(net):
    partner = net.partner()
    gw = net.gateway(route_config({
        "fast": one(partner, "/ok"),
        "five-hundred": one(partner, "/status/500"),
        "slow": one(partner, "/delay/2000", timeout_ms=100),
        "midbody": one(partner, "/midbody"),
        "reset": one(partner, "/reset"),
        "big": one(partner, "/big/5000", max_response_bytes=1000),
        "refused": {"url": net.refused_url()},
        "echo": one(partner, "/echo"),
    }))
    answer = gw.post(body=b'{"x": 1}')
    assert answer.code == 200
    assert answer.outcomes() == {
        "fast": "ok", "five-hundred": "http_error", "slow": "timeout", "midbody": "error",
        "reset": "error", "big": "too_large", "refused": "error", "echo": "ok"}
    by_name = {r["partner"]: r for r in answer.json["results"]}
    assert by_name["fast"]["status"] == 200 and by_name["fast"]["body"] == '{"bid": 1}'
    assert by_name["five-hundred"]["status"] == 500
    assert by_name["five-hundred"]["body"] == '{"error": "partner says no"}'
    assert by_name["slow"]["error"] == "no answer in 100 ms"
    assert by_name["refused"]["error"] == "connection refused"
    assert by_name["midbody"]["error"] == "connection closed before the answer was complete"
    assert by_name["big"]["body"] is None
    assert answer.json["complete"] is False
    assert answer.header("X-Fanout-Complete") == "false"
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("X-Request-Id") == answer.json["request_id"]
    # The order of results is the route's order.
    assert [r["partner"] for r in answer.json["results"]][:3] == ["fast", "five-hundred", "slow"]


def test_partner_receives_body_headers_budget_and_request_id(net):
    partner = net.partner()
    gw = net.gateway(route_config(
        {"echo": one(partner, "/echo", headers={"X-Api-Key": "k1"}, timeout_ms=250)},
        deadline_ms=1000))
    answer = gw.post(body=b'{"imp": [1]}', headers={"X-Request-Id": "abc-123"})
    seen = json.loads(answer.json["results"][0]["body"])
    assert seen["method"] == "POST"
    assert seen["body"] == '{"imp": [1]}'
    assert seen["headers"]["Content-Type"] == ["application/json"]
    assert seen["headers"]["X-Api-Key"] == ["k1"]
    assert seen["headers"]["X-Request-Id"] == ["abc-123"]
    assert 200 <= int(seen["headers"]["X-Fanout-Deadline-Ms"][0]) <= 250
    assert answer.json["request_id"] == "abc-123"
    assert answer.json["complete"] is True


def test_client_may_ask_for_less_time_never_more(net):
    partner = net.partner()
    gw = net.gateway(route_config({"echo": one(partner, "/echo", timeout_ms=300)},
                                   deadline_ms=500))
    less = gw.post(headers={"X-Fanout-Deadline-Ms": "100"})
    seen = json.loads(less.json["results"][0]["body"])
    assert int(seen["headers"]["X-Fanout-Deadline-Ms"][0]) <= 100
    more = gw.post(headers={"X-Fanout-Deadline-Ms": "100000"})
    seen = json.loads(more.json["results"][0]["body"])
    assert int(seen["headers"]["X-Fanout-Deadline-Ms"][0]) == 300
    bad = gw.post(headers={"X-Fanout-Deadline-Ms": "soon"})
    assert bad.code == 400 and "X-Fanout-Deadline-Ms" in bad.json["error"]


def test_hanging_partner_does_not_hold_the_answer_past_the_deadline(net):
    partner = net.partner()
    gw = net.gateway(route_config(
        {"fast": one(partner, "/ok"), "hang": one(partner, "/hang", timeout_ms=5000)},
        deadline_ms=200))
    client = gw.send()
    took = net.until(lambda: client.closed)
    answer = gw.answer(client)
    assert answer.outcomes() == {"fast": "ok", "hang": "timeout"}
    # Its call got what was left of the deadline less reserve_ms (5 ms).
    assert took == pytest.approx(0.195)
    # The straggler was cancelled: its connection aborted, the partner saw it go.
    assert partner.lost_count == 1 and partner.open_requests == set()
    assert aborted_calls(net, partner) == 1


def test_streaming_body_is_cut_at_the_timeout(net):
    partner = net.partner()
    gw = net.gateway(route_config({"drip": one(partner, "/drip/1000", timeout_ms=200)}))
    answer = gw.post()
    assert answer.outcomes() == {"drip": "timeout"}
    # Aborted at the timeout: the partner stopped dripping then.
    assert partner.lost_count == 1 and aborted_calls(net, partner) == 1
    assert not any("LoopingCall" in repr(c) for c in net.clock.getDelayedCalls())


def test_oversized_bodies_abort_the_connection(net):
    partner = net.partner()
    gw = net.gateway(route_config({
        "announced": one(partner, "/big/100000", max_response_bytes=1000),
        "chunked": one(partner, "/bigchunked/100000", max_response_bytes=1000),
        "fits": one(partner, "/big/1000", max_response_bytes=1000),
    }))
    answer = gw.post()
    assert answer.outcomes() == {"announced": "too_large", "chunked": "too_large", "fits": "ok"}


def test_client_disconnect_cancels_the_fanout(net, no_logged_errors):
    partner = net.partner()
    gw = net.gateway(route_config({"hang": one(partner, "/hang", timeout_ms=5000)},
                                  deadline_ms=10000))
    client = gw.client(b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    net.run()
    assert len(gw.gateway.inflight) == 1 and partner.seen == 1
    client.close()
    net.run()  # no time passes: the close alone cancels the call
    assert partner.lost_count == 1 and aborted_calls(net, partner) == 1
    assert not gw.gateway.inflight
    assert gw.gateway.admission.admitted == 0


def test_connections_are_reused(net):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok"), "b": one(partner, "/echo")}))
    for _ in range(50):
        answer = gw.post()
        assert answer.outcomes() == {"a": "ok", "b": "ok"}
    # 100 calls, two at a time: two connections, each used for 50 calls.
    assert partner.connections == 2 and partner.seen == 100


def test_selection_by_country_and_os(net):
    partner = net.partner()
    gw = net.gateway({
        "partners": {
            "us": one(partner, "/ok", countries=["US", "CA"]),
            "not-us": one(partner, "/ok", exclude_countries=["US"]),
            "mobile": one(partner, "/ok", os=["android", "ios"]),
            "desktop": one(partner, "/ok", os=["windows", "macos", "linux"]),
            "all": one(partner, "/ok"),
        },
        "routes": {"bid": {"partners": ["us", "not-us", "mobile", "desktop", "all"]},
                   "two": {"partners": ["us", "not-us", "mobile", "desktop", "all"],
                           "max_partners": 2}},
    })

    def chosen(path="/bid", body=b"{}", **headers):
        answer = gw.post(path, body=body, headers=headers)
        assert answer.code == 200, answer.body
        return [r["partner"] for r in answer.json["results"]]

    assert chosen(**{"X-Country": "us", "X-OS": "Android"}) == ["us", "mobile", "all"]
    assert chosen(**{"X-Country": "DE", "X-OS": "windows"}) == \
        ["not-us", "desktop", "all"]
    body = json.dumps({"device": {"geo": {"country": "CA"}, "os": "iOS"}}).encode()
    assert chosen(body=body) == ["us", "not-us", "mobile", "all"]
    # The header wins over the body field.
    assert chosen(body=body, **{"X-Country": "US"}) == ["us", "mobile", "all"]
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36"
    assert chosen(**{"X-Country": "FR", "User-Agent": ua}) == \
        ["not-us", "desktop", "all"]
    ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"
    assert chosen(**{"User-Agent": ua}) == ["not-us", "mobile", "all"]
    # No country and no OS: only the unrestricted partners.
    assert chosen() == ["not-us", "all"]
    assert chosen("/two", **{"X-Country": "US", "X-OS": "ios"}) == ["us", "mobile"]


def test_route_with_no_matching_partner_answers_empty(net):
    partner = net.partner()
    gw = net.gateway(route_config({"us": one(partner, "/ok", countries=["US"])}))
    answer = gw.post(headers={"X-Country": "JP"})
    assert answer.code == 200
    assert answer.json["results"] == [] and answer.json["complete"] is True


def test_error_answers_are_json(net):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok")}, max_body_bytes=100))
    cases = [
        (gw.post("/nope"), 404),
        (gw.post("/../admin"), 404),
        (gw.post("/bid", method="GET"), 405),
        (gw.post(body=b"{not json"), 400),
        (gw.post(body=b"[" * 50000), 413),
        (gw.post(body=b"[" * 90), 400),
        (gw.post(headers={"X-Country": "USA"}), 400),
        (gw.post(headers={"X-OS": "\x01"}), 400),
    ]
    for answer, code in cases:
        assert answer.code == code, answer.body
        assert answer.header("Content-Type") == "application/json"
        assert set(answer.json) == {"error"} and answer.json["error"]
    assert cases[2][0].header("Allow") == "POST"


def test_body_over_the_cap_is_refused_before_it_is_read(net):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok")}, max_body_bytes=100))
    # Announce a huge body and send none of it: the answer comes anyway.
    client = gw.client(b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
    net.run()
    assert client.closed
    data = client.received
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b'{"error": "body over 100 bytes"}' in data
    # The whole oversized body in the same packet: still one 413, nothing else.
    client = gw.client(b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n"
                       + b" " * 200)
    net.run()
    data = client.received
    assert data.startswith(b"HTTP/1.1 413 ") and data.count(b"HTTP/1.1") == 1
    assert partner.seen == 0
    # Chunked, no length announced: refused once the cap is passed.
    client = gw.client(b"POST /bid HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + b"40\r\n" + b"[" * 64 + b"\r\n" + b"40\r\n" + b"[" * 64)
    net.run()
    assert client.closed
    data = client.received
    assert data.startswith(b"HTTP/1.1 413 ")


def test_over_max_inflight_is_refused_at_once(net):
    partner = net.partner()
    gw = net.gateway(route_config({"hang": one(partner, "/hang")},
                                  max_inflight=1, deadline_ms=2000))
    held = gw.send()
    net.run()
    assert partner.seen == 1
    second = gw.send()
    net.run()  # no time passes: refused at once
    [refused] = second.answers()
    assert refused.code == 503
    assert refused.header("Retry-After") == "1"
    assert "in-flight limit" in refused.json["error"]
    answer = gw.answer(held)
    assert answer.outcomes() == {"hang": "timeout"}
    assert gw.gateway.admission.admitted == 0


def test_an_error_after_the_client_left_is_logged_not_answered(net, no_logged_errors, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(Gateway, "_answer", broken)
    partner = net.partner()
    gw = net.gateway(route_config({"hang": one(partner, "/hang", timeout_ms=5000)},
                                  deadline_ms=10000))
    client = gw.client(b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    net.run()
    client.close()  # its fan-out is cancelled, and the answer fails after the request ended
    net.run()
    [logged] = no_logged_errors
    no_logged_errors.clear()
    assert "after it ended" in logged["log_format"] and logged["log_failure"].check(RuntimeError)
    assert client.answers() == [] and not gw.gateway.inflight
