"""The answer's size: bounded by server.max_answer_bytes, and no six-fold
blow-up of bodies that are not UTF-8."""

from __future__ import annotations

import json

from twisted.web.test.requesthelper import DummyRequest

from txfanout import answer
from txfanout.budget import Budget
from txfanout.config import ServerConfig
from txfanout.inbound import Inbound
from txfanout.outcomes import CallResult

from .configs import route_config

INBOUND = Inbound("bid", "req-1", b"{}", None, "other", Budget.of(0.0, 500, ServerConfig()))
LEFT_OUT = "body left out: answer over 65536 bytes"


def build(calls: list[CallResult], max_bytes: int = 65536) -> tuple[bytes, DummyRequest]:
    request = DummyRequest([b"bid"])
    body, complete = answer.results(request, INBOUND, calls, 0.01, max_bytes)
    assert complete is (json.loads(body)["complete"])
    return body, request


def ok(name: str, body: str) -> CallResult:
    return CallResult(name, "ok", 200, 1.0, body)


def test_an_answer_that_fits_is_whole_and_complete():
    body, request = build([ok("a", "x" * 30000), ok("b", "y" * 30000)])
    doc = json.loads(body)
    assert [r["body"] for r in doc["results"]] == ["x" * 30000, "y" * 30000]
    assert doc["complete"] is True
    assert request.responseHeaders.getRawHeaders(b"X-Fanout-Complete") == [b"true"]


def test_bodies_that_would_pass_the_cap_are_left_out_largest_first():
    calls = [ok("a", "a" * 20000), ok("b", "b" * 40000), ok("c", "c" * 30000),
             CallResult("d", "timeout", None, 300.0, None, "no answer in 300 ms")]
    body, request = build(calls)
    assert len(body) <= 65536
    assert request.responseHeaders.getRawHeaders(b"Content-Length") == [b"%d" % len(body)]
    doc = json.loads(body)
    results = {r["partner"]: r for r in doc["results"]}
    assert list(results) == ["a", "b", "c", "d"]  # every entry kept, in order
    assert (results["b"]["outcome"], results["b"]["status"]) == ("ok", 200)
    assert (results["b"]["body"], results["b"]["error"]) == (None, LEFT_OUT)
    assert results["a"]["body"] == "a" * 20000 and results["c"]["body"] == "c" * 30000
    assert results["d"]["error"] == "no answer in 300 ms"
    assert doc["complete"] is False
    assert request.responseHeaders.getRawHeaders(b"X-Fanout-Complete") == [b"false"]


def test_escaping_is_counted_in_the_cap():
    # Control characters take six bytes each once escaped (\u0001).
    body, _ = build([ok("a", "\x01" * 8000), ok("b", "\x01" * 8000)])
    assert len(body) <= 65536
    assert [r["body"] is None for r in json.loads(body)["results"]] == [True, False]


def test_bytes_that_are_not_utf8_cost_three_bytes_each_not_six():
    # A partner's 0xff bytes are each U+FFFD: sent as UTF-8, not as \ufffd.
    body, _ = build([ok("a", "\ufffd" * 10000)])
    assert len(body) < 3 * 10000 + 300
    assert json.loads(body.decode("utf-8"))["results"][0]["body"] == "\ufffd" * 10000


def test_partners_whose_bodies_would_pass_max_answer_bytes(net):
    partner = net.partner()
    # Two partners answer 20,000 bytes of 0xff: 60 KB each in the answer.
    gw = net.gateway(route_config({"a": {"url": partner.url("/ff/20000")},
                                   "b": {"url": partner.url("/ff/20000")}},
                                  max_answer_bytes=65536))
    got = gw.post()
    assert got.code == 200 and len(got.body) <= 65536
    assert got.header("X-Fanout-Complete") == "false"
    a, b = got.json["results"]
    assert (a["outcome"], a["body"], a["error"]) == ("ok", None, LEFT_OUT)
    assert (b["outcome"], b["body"]) == ("ok", "\ufffd" * 20000)
