"""Malicious clients and bad input on the public listener.

Each case is sent byte for byte over an in-memory connection to a gateway
on a fake reactor (tests/fakes.py), with time moved by hand: a 408 comes at
the request timeout to the millisecond, and no case waits for real time.
None may get a 500 or a traceback in the log (the ``logs`` fixture fails
the test on either); each gets the 4xx that fits, or a closed connection;
the gateway serves a normal request afterwards.
"""

from __future__ import annotations

import json

import pytest

from .configs import route_config
from .fakes import FakeGateway, Network
from .hostile import REFUSED, parse_responses, request


def exchange(gw: FakeGateway, data: bytes, limit: float = 5.0) -> list:
    """Send ``data``; wait (fake time) for the gateway to close; its answers."""
    client = gw.client(data)
    gw.net.until(lambda: client.closed, limit)
    return parse_responses(client.received, data.startswith(b"HEAD "))


@pytest.fixture
def gw(net: Network) -> FakeGateway:
    partner = net.partner()
    return net.gateway(route_config(
        {"ok": {"url": partner.url("/ok")}},
        request_timeout_ms=300, idle_timeout_ms=2000))


def still_serves(gw: FakeGateway) -> None:
    answer = gw.post()
    assert answer.code == 200 and answer.outcomes() == {"ok": "ok"}
    assert gw.gateway.admission.admitted == 0 and not gw.gateway.inflight


def error_of(response) -> str:
    status, headers, body = response
    assert headers[b"content-type"] == b"application/json", response
    return json.loads(body)["error"]


# -- one refusal, then the connection closes --------------------------------

def counted(gw) -> dict[tuple[str, str], float]:
    """txfanout_requests_total by (route, code), zeros left out."""
    [family] = [m for m in gw.gateway.metrics.registry.collect()
                if m.name == "txfanout_requests"]
    return {(s.labels["route"], s.labels["code"]): s.value for s in family.samples
            if s.name == "txfanout_requests_total" and s.value}


# Requests that never reach the gateway's handler have no path until their
# request line is read, and count as route "unknown" until then.
NO_PATH = {"garbage", "http2-preface", "http0.9", "bare-lf-request-line", "nul-in-path",
           "high-byte-in-path", "path-too-long", "query-too-long", "request-line-never-ends"}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_with_one_answer_and_closed(name, gw, logs):
    data, code = REFUSED[name]
    answers = exchange(gw, data)
    assert [a[0] for a in answers] == [code], answers  # never a second request
    assert answers[0][1][b"connection"] == b"close"
    assert error_of(answers[0])
    assert gw.site.open_connections == 0
    assert counted(gw) == {("unknown" if name in NO_PATH else "bid", str(code)): 1}
    still_serves(gw)


# -- answered with a 4xx (or 200), connection kept until Connection: close --

CHUNKED = b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"

UTF8_COUNTRY = "\u00fc".encode()
ANSWERED = {
    # Routes that are not routes: traversal, admin paths, absolute URIs.
    "traversal": (request(path=b"/../admin"), 404),
    "encoded-traversal": (request(path=b"/%2e%2e/admin"), 404),
    "dot-segments": (request(path=b"/./bid"), 404),
    "route-then-traversal": (request(path=b"/bid/../bid"), 404),
    "double-slash": (request(path=b"//bid"), 404),
    "trailing-slash": (request(path=b"/bid/"), 404),
    "metrics": (request(path=b"/metrics"), 404),
    "healthz": (request(path=b"/healthz"), 404),
    "debug": (request(path=b"/debug/inflight"), 404),
    "admin": (request(path=b"/admin/config"), 404),
    "absolute-uri": (request(path=b"http://evil.example/bid"), 404),
    "asterisk": (request(path=b"*", method=b"OPTIONS"), 404),
    "connect": (request(path=b"evil.example:443", method=b"CONNECT"), 404),
    "long-path-within-limit": (request(path=b"/" + b"a" * 4000), 404),
    "encoded-nul": (request(path=b"/bi%00d"), 404),
    "encoded-bad-utf8": (request(path=b"/%ff%fe"), 404),
    "raw-non-ascii-path": (request(path=b"/bid\x80\xa0"), 404),  # Twisted lets 0x7f-0xb0 by
    # Methods.
    "get": (request(method=b"GET", body=b""), 405),
    "head": (request(method=b"HEAD", body=b""), 405),
    "put": (request(method=b"PUT"), 405),
    "odd-method": (request(method=b"FROB"), 405),
    # Host.
    "host-not-utf8": (request().replace(b"Host: gw", b"Host: \xff\xfe"), 400),
    "two-hosts": (request(headers=b"Host: other\r\n"), 400),
    "no-host": (request().replace(b"Host: gw\r\n", b""), 400),  # HTTP/1.0 may omit it
    # Headers we read.
    "country-not-a-code": (request(headers=b"X-Country: USA\r\n"), 400),
    "country-digits": (request(headers=b"X-Country: 12\r\n"), 400),
    "country-not-utf8": (request(headers=b"X-Country: \xff\xfe\r\n"), 400),
    "country-utf8-letters": (request(headers=b"X-Country: " + UTF8_COUNTRY * 2 + b"\r\n"),
                             400),
    "os-control-char": (request(headers=b"X-OS: \x01\r\n"), 400),
    "os-too-long": (request(headers=b"X-OS: " + b"a" * 33 + b"\r\n"), 400),
    "os-not-utf8": (request(headers=b"X-OS: \xff\r\n"), 400),
    "deadline-not-a-number": (request(headers=b"X-Fanout-Deadline-Ms: 1e3\r\n"), 400),
    "deadline-huge": (request(headers=b"X-Fanout-Deadline-Ms: " + b"9" * 50 + b"\r\n"), 400),
    "deadline-zero": (request(headers=b"X-Fanout-Deadline-Ms: 0\r\n"), 400),
    "deadline-unicode-digits": (request(headers="X-Fanout-Deadline-Ms: \u0663\r\n".encode()),
                                400),
    # Headers we only pass on or guess from: harmless.
    "request-id-not-utf8": (request(headers=b"X-Request-Id: \xff\xfe\r\n"), 200),
    "request-id-injection": (request(headers=b"X-Request-Id: a b\tc\r\n"), 200),
    "user-agent-not-utf8": (request(headers=b"User-Agent: \xff\xfe\xfd\r\n"), 200),
    "country-unassigned": (request(headers=b"X-Country: ZZ\r\n"), 200),
    "os-unknown": (request(headers=b"X-OS: beos\r\n"), 200),
    "obsolete-line-folding": (request(headers=b"X-Other: a\r\n b\r\n"), 200),
    "query-within-limit": (request(path=b"/bid?" + b"q=%ff&" * 500), 200),
    "form-content-type": (request(headers=b"Content-Type: application/x-www-form-urlencoded\r\n",
                                  body=b"a=1&" * 1000), 400),
    "multipart-content-type": (request(headers=b"Content-Type: multipart/form-data; "
                                       b"boundary=x\r\n", body=b"--x\r\nbroken"), 400),
    # JSON.
    "json-invalid": (request(body=b"{not json"), 400),
    "json-not-utf8": (request(body=b'{"a": "\xff"}'), 400),
    "json-deep-open": (request(body=b"[" * 60000), 400),
    "json-deep-balanced": (request(body=b"[" * 30000 + b"]" * 30000), 400),
    "json-deep-objects": (request(body=b'{"a":' * 10000 + b"1" + b"}" * 10000), 400),
    "json-nested-512": (request(body=b'{"a":' * 512 + b"1" + b"}" * 512), 200),
    "json-nested-513": (request(body=b'{"a":' * 513 + b"1" + b"}" * 513), 400),
    "json-huge-integer": (request(body=b"1" * 60000), 400),
    "json-huge-integer-in-field": (request(body=b'{"device": {"os": ' + b"7" * 5000 + b"}}"),
                                   400),
    "json-huge-string": (request(body=b'{"s": "' + b"x" * 60000 + b'"}'), 200),
    # Not strict JSON: no partner should have to parse NaN or Infinity.
    "json-huge-exponent": (request(body=b"1e999999"), 400),
    "json-infinity": (request(body=b'{"x": -Infinity}'), 400),
    "json-country-huge-string": (request(body=b'{"device": {"geo": {"country": "'
                                         + b"U" * 60000 + b'"}}}'), 400),
    "json-country-number": (request(body=b'{"device": {"geo": {"country": 840}}}'), 400),
    "json-os-list": (request(body=b'{"device": {"os": ["ios"]}}'), 400),
    "json-duplicate-keys": (request(body=b'{"device": 1, "device": {"os": "ios"}}'), 200),
    "json-nan": (request(body=b'{"x": NaN}'), 400),
    "json-utf16": (request(body='{"device": {"os": "ios"}}'.encode("utf-16")), 200),
    # Bodies.
    "body-over-the-cap": (request(body=b" " * 70000), 413),
    "body-over-the-cap-chunked": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"8000\r\n" + b" " * 0x8000 + b"\r\n" + b"8000\r\n" + b" " * 0x8000 + b"\r\n"
        + b"10\r\n" + b" " * 16 + b"\r\n0\r\n\r\n", 413),
    # Chunk framing counts against max_body_bytes, each chunk as at least
    # 256 bytes: tiny chunks cost CPU per chunk, not per byte.
    "tiny-chunks": (CHUNKED + b"1\r\n{\r\n" + b"1\r\n \r\n" * 300 + b"1\r\n}\r\n0\r\n\r\n",
                    413),
    "long-chunk-extensions": (CHUNKED + (b"1;e=" + b"e" * 1000 + b"\r\n \r\n") * 80
                              + b"2\r\n{}\r\n0\r\n\r\n", 413),
    "huge-trailers": (CHUNKED + b"2\r\n{}\r\n0\r\n"
                      + (b"X-T: " + b"t" * 8140 + b"\r\n") * 8 + b"\r\n", 413),
    "chunks-within-the-cap": (CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                              + b"1\r\n[\r\n" + (b"fa0\r\n" + b" " * 4000 + b"\r\n") * 15
                              + b"1\r\n]\r\n0\r\n\r\n", 200),
    "chunked-with-extensions-and-trailer": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close"
        b"\r\n\r\n2;ext=1\r\n{}\r\n0\r\nX-Trailer: t\r\n\r\n", 200),
    "http/1.0": (b"POST /bid HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", 200),
}


@pytest.mark.parametrize("name", list(ANSWERED))
def test_answered_with_the_status_that_fits(name, gw, logs):
    data, code = ANSWERED[name]
    answers = exchange(gw, data)
    assert [a[0] for a in answers] == [code], answers
    if code != 200 and not data.startswith(b"HEAD "):
        message = error_of(answers[0])
        assert "Traceback" not in message and "/" not in message  # no path, no URL
    assert gw.site.open_connections == 0
    still_serves(gw)


def test_a_body_in_tiny_chunks_is_refused_with_a_413_that_says_why(gw, logs):
    answers = exchange(gw, CHUNKED + b"1\r\n \r\n" * 65000)
    assert [a[0] for a in answers] == [413]
    assert error_of(answers[0]) == "body over 65536 bytes (chunk framing counted)"
    assert counted(gw) == {("bid", "413"): 1}


def test_body_longer_than_announced_is_the_next_request(gw, logs):
    # The bytes past Content-Length are parsed as the next request: here not
    # one, so 400 and close after the first answer.
    answers = exchange(gw, request(close=False).replace(
        b"Content-Length: 2", b"Content-Length: 1") + b"EXTRA\r\n\r\n")
    assert [a[0] for a in answers] == [400, 400]  # "{" is not JSON; "}EXTRA" not a request
    answers = exchange(gw, request(body=b"{}", close=False) + b"}{\r\n\r\n")
    assert [a[0] for a in answers] == [200, 400]


def test_pipelined_requests_are_answered_in_order(gw, logs):
    data = b"".join(request(close=i == 4, headers=b"X-Request-Id: req-%d\r\n" % i)
                    for i in range(5))
    answers = exchange(gw, data)
    assert [a[0] for a in answers] == [200] * 5
    assert [a[1][b"x-request-id"] for a in answers] == [b"req-%d" % i for i in range(5)]
    # Refusals are in order too, and the first fatal one ends the connection.
    data = request(close=False) + request(path=b"/nope", close=False) \
        + b"POST /bid HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}" + request()
    answers = exchange(gw, data)
    assert [a[0] for a in answers] == [200, 404, 400]


def test_expect_continue_over_the_cap_gets_only_the_413(gw, logs):
    data = b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n" \
           b"Content-Length: 1000000\r\n\r\n"
    answers = exchange(gw, data)
    assert [a[0] for a in answers] == [413]
    data = b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nConnection: close\r\n" \
           b"Content-Length: 2\r\n\r\n"
    client = gw.client(data)
    gw.net.run()
    assert client.received == b"HTTP/1.1 100 Continue\r\n\r\n" and not client.closed
    client.send(b"{}")
    gw.net.until(lambda: client.closed)
    assert [a[0] for a in parse_responses(client.received)] == [100, 200]


# -- slow and incomplete requests: 408 after request_timeout_ms ---------------


SLOW = {
    # name: (bytes, dripped a byte every 20 ms, the answers before the 408)
    "headers-a-byte-at-a-time": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nX-F: " + b"a" * 100, True,
                                 []),
    "body-a-byte-at-a-time": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 200\r\n\r\n"
                              + b" " * 200, True, []),
    "chunks-a-byte-at-a-time": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                                b"\r\n\r\n" + b"1\r\n \r\n" * 40, True, []),
    "request-line-only": (b"POST /bid HTTP/1.1\r\n", False, []),
    "headers-without-end": (b"POST /bid HTTP/1.1\r\nHost: gw\r\n", False, []),
    "body-shorter-than-announced": (b"POST /bid HTTP/1.1\r\nHost: gw\r\n"
                                    b"Content-Length: 100\r\n\r\n{\"a\": 1", False, []),
    "chunked-never-ends": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\n2\r\n{}\r\n", False, []),
    "expect-continue-then-nothing": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue"
                                     b"\r\nContent-Length: 2\r\n\r\n", False, [100]),
    "complete-then-partial-pipelined": (request(close=False) + b"POST /bid HTTP/1.1\r\nHo",
                                        False, [200]),
}


@pytest.mark.parametrize("name", list(SLOW))
def test_slow_or_unfinished_requests_get_408(name, gw, logs):
    data, dripped, before = SLOW[name]
    client = gw.client()
    started = gw.net.clock.seconds()
    if dripped:
        assert gw.net.drip(client, data) > 0  # the deadline came before the last byte
    else:
        client.send(data)
        gw.net.until(lambda: client.closed)
    codes = [a[0] for a in parse_responses(client.received)]
    assert codes == before + [408], codes
    # Dripped, the request line is not even whole in time: no path yet.
    assert counted(gw)[("unknown" if dripped else "bid", "408")] == 1
    # 300 ms from the request's first byte (the one pipelined after a 200
    # counts from its own first byte, which came with the first request).
    assert client.closed_at - started == pytest.approx(0.3)
    assert gw.site.open_connections == 0
    still_serves(gw)


def test_silent_connections_are_closed_by_the_idle_timeout(net, logs):
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}}, idle_timeout_ms=300))
    client = gw.client()
    assert net.until(lambda: client.closed) == pytest.approx(0.3)
    assert client.received == b""
    assert gw.value("txfanout_idle_closed_total") == 1


def test_hundreds_of_idle_connections_stay_bounded(net, logs):
    partner = net.partner()
    gw = net.gateway(route_config({"ok": {"url": partner.url("/ok")}},
                                  max_connections=100, idle_timeout_ms=300))
    peak = [0]
    opened = gw.site.connection_opened

    def counting():
        opened()
        peak[0] = max(peak[0], gw.site.open_connections)

    gw.site.connection_opened = counting
    clients = [gw.client() for _ in range(300)]
    net.run()
    assert peak[0] == 100 and gw.port.accepted == 100  # the rest wait in the backlog
    took = net.until(lambda: all(c.closed for c in clients))
    assert took == pytest.approx(0.9)  # three rounds of the idle timeout
    assert all(c.received == b"" for c in clients)
    assert peak[0] == 100
    assert gw.site.open_connections == 0
    still_serves(gw)


def test_keep_alive_client_that_sends_garbage_after_a_good_request(gw, logs):
    client = gw.client(request(close=False))
    gw.net.run()
    [answer] = client.answers()
    assert answer.code == 200 and not client.closed
    client.take()
    client.send(b"\x00\x01\x02 nonsense\r\n\r\n")
    gw.net.until(lambda: client.closed)
    assert client.received.startswith(b"HTTP/1.1 400 ")
