"""The answer's size: bounded by server.max_answer_bytes, and no six-fold
blow-up of bodies that are not UTF-8."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import pytest_twisted
from twisted.web.test.requesthelper import DummyRequest

from txfanout import answer, outcomes
from txfanout.budget import Budget
from txfanout.config import ServerConfig
from txfanout.inbound import Inbound
from txfanout.outcomes import CallResult
from txfanout.answer import _encode as answer_encode

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


@pytest_twisted.ensureDeferred
async def test_partners_whose_bodies_would_pass_max_answer_bytes(partner, make_gateway):
    # Two partners answer 20,000 bytes of 0xff: 60 KB each in the answer.
    gw = make_gateway(route_config({"a": {"url": partner.url("/ff/20000")},
                                    "b": {"url": partner.url("/ff/20000")}},
                                   max_answer_bytes=65536))
    got = await gw.post()
    assert got.code == 200 and len(got.body) <= 65536
    assert got.header("X-Fanout-Complete") == "false"
    a, b = got.json["results"]
    assert (a["outcome"], a["body"], a["error"]) == ("ok", None, LEFT_OUT)
    assert (b["outcome"], b["body"]) == ("ok", "\ufffd" * 20000)


# -- partner answers that are JSON are embedded as JSON --


def answered(payload: bytes, content_type: bytes | None = b"application/json",
             name: str = "a") -> CallResult:
    return outcomes.answered(name, 200, 1.0, payload, content_type)


@pytest.mark.parametrize("content_type", [
    b"application/json", b"Application/JSON; charset=utf-8", b"application/problem+json"])
def test_a_json_answer_is_embedded_as_a_value(content_type: bytes) -> None:
    body, _ = build([answered(b'{"bid": 0.9, "ad": "<b>\\u00e9</b>"}', content_type)])
    (entry,) = json.loads(body)["results"]
    assert entry["json"] == {"bid": 0.9, "ad": "<b>\u00e9</b>"} and "body" not in entry
    assert "\\\"" not in body.decode()  # nothing escaped twice


@pytest.mark.parametrize("payload, content_type", [
    (b'{"bid": 0.9}', b"text/plain"),           # the type does not say JSON
    ('{"bid": 0.9}'.encode("utf-16"), b"application/json"),  # JSON, but not UTF-8
    (b"[" * 5000 + b"]" * 5000, b"application/json"),  # nested past what parses
    (b'{"a": ' * 513 + b"1" + b"}" * 513, b"application/json"),  # past MAX_DEPTH (512)
    (b"[" * 300 + b"{\"a\": [" * 107 + b"]}" * 107 + b"]" * 300, b"application/json"),
    (b'{"bid": 0.9}', None),                    # no type at all
    (b'{"bid": NaN}', b"application/json"),     # not strict JSON
    (b'{"bid": 1e999}', b"application/json"),   # overflows to Infinity
    (b'{"bid": 0.9', b"application/json"),      # cut short
    (b'\xff{}', b"application/json"),           # not UTF-8
    (b"", b"application/json"),                 # nothing
    (b"ok", b"application/jsonx"),              # another type
])
def test_anything_else_stays_text(payload: bytes, content_type: bytes | None) -> None:
    body, _ = build([answered(payload, content_type)])
    (entry,) = json.loads(body)["results"]
    assert entry["body"] == payload.decode("utf-8", "replace") and "json" not in entry


def test_json_nested_max_depth_deep_is_embedded() -> None:
    # 512 levels, on either runtime (PyPy's decoder alone would read 5,000).
    came = b"[" * 256 + b'{"a": ' * 256 + b"1" + b"}" * 256 + b"]" * 256
    body, _ = build([answered(came)])
    assert b'"json": ' + came + b"}" in body


def test_json_stands_as_it_came() -> None:
    # Not decoded and encoded again: numbers, escapes and spacing as the
    # partner wrote them, a lone surrogate escape included.
    came = b'{"price":1.10,"big":1e15, "s":"\\ud800\\u00e9"}'
    body, _ = build([answered(came), ok("text", "t")])
    assert b'"json": ' + came + b"}" in body
    entry = json.loads(body)["results"][0]
    assert entry["json"] == {"price": 1.1, "big": 1e15, "s": "\ud800\u00e9"}


def test_a_text_body_that_looks_like_a_json_member_stays_text() -> None:
    mark = '", "json": [2]}'
    calls = [ok("mark", mark), answered(b"[1]", name="one"), ok("mark2", mark)]
    results = json.loads(build(calls)[0])["results"]
    assert [r.get("body", r.get("json")) for r in results] == [mark, [1], mark]


def test_embedded_json_counts_in_the_cap_and_is_left_out_like_a_body() -> None:
    big = b"[" + b",".join([b"1"] * 25000) + b"]"   # 50 KB
    calls = [answered(big, name="big"), ok("text", "t" * 15000),
             answered(b'{"bid": 1}', name="small")]
    body, request = build(calls)
    assert len(body) <= 65536
    doc = json.loads(body)
    big_entry, text, small = doc["results"]
    assert (big_entry["body"], big_entry["error"]) == (None, LEFT_OUT)
    assert "json" not in big_entry and big_entry["status"] == 200
    assert text["body"] == "t" * 15000 and small["json"] == {"bid": 1}
    assert doc["complete"] is False
    # Counted as what it takes, not six times it: 60 KB of JSON still fits.
    fits = [answered(b"[" + b",".join([b"1"] * 30000) + b"]")]
    assert json.loads(build(fits)[0])["complete"] is True


def test_the_answer_names_the_country_and_os_it_resolved() -> None:
    inbound = Inbound("bid", "req-2", b"{}", "DE", "ios", INBOUND.budget)
    body, _ = answer.results(DummyRequest([b"bid"]), inbound, [ok("a", "x")], 0.01, 65536)
    assert {k: v for k, v in json.loads(body).items() if k in ("country", "os")} == {
        "country": "DE", "os": "ios"}
    assert json.loads(build([ok("a", "x")])[0])["country"] is None  # none given


@pytest_twisted.ensureDeferred
async def test_a_partner_json_answer_reaches_the_client_as_json(partner, make_gateway):
    gw = make_gateway(route_config({
        "json": {"url": partner.url("/typed/application~json")},
        "text": {"url": partner.url("/typed/text~plain")}}))
    got = await gw.post(body=b'{"device": {"os": "android"}}', headers={"X-Country": "fr"})
    assert got.code == 200
    doc = got.json
    assert (doc["country"], doc["os"]) == ("FR", "android")
    by_name = {r["partner"]: r for r in doc["results"]}
    assert by_name["json"]["json"] == {"device": {"os": "android"}}
    assert by_name["text"]["body"] == '{"device": {"os": "android"}}'


_AWKWARD = ["", "dsp-a", "ü", "\u00e9t\u00e9", "\u2028", "a\"b", "back\\slash",
            "\x00\x1f\x7f", "tab\there", "\U0001f600", "</script>", "1e999"]


@pytest.mark.parametrize("seed", range(20))
def test_answers_are_the_bytes_json_dumps_would_write(seed: int) -> None:
    # answer._encode writes this one shape by hand: byte for byte what
    # json.dumps(ensure_ascii=False) writes, JSON answers spliced in last.
    rng = random.Random(seed)

    def text() -> str:
        return "".join(rng.choice(_AWKWARD) for _ in range(rng.randrange(3)))

    def number() -> float | int | None:
        return rng.choice([None, 0, -1, 200, 2**70, 0.0, -0.0, 0.1, 1e16, 1.5e-7, 12.3])

    head = {"request_id": text(), "route": text(), "country": rng.choice([None, text()]),
            "os": rng.choice([None, text()]), "complete": rng.choice([True, False]),
            "elapsed_ms": number()}
    entries, calls, expected = [], [], []
    for _ in range(rng.randrange(4)):
        entry: dict[str, Any] = {"partner": text(), "outcome": text(), "status": number(),
                                 "latency_ms": number()}
        answer = rng.choice([None, {"bid": number(), "ad": text(), "n": [1, {"x": None}]}])
        if answer is None:
            entry["body"] = rng.choice([None, text()])
        if rng.random() < 0.5:
            entry["error"] = text()
        raw = None if answer is None else json.dumps(answer, ensure_ascii=False).encode()
        calls.append(CallResult("p", outcomes.OK, json=raw))
        entries.append(dict(entry))
        expected.append(entry if answer is None else {**entry, "json": answer})
    reference = json.dumps({**head, "results": expected}, ensure_ascii=False).encode()
    assert answer_encode(head, entries, calls) == reference
