"""Malicious clients and bad input on the public listener.

Each case is sent byte for byte over a real connection. None may get a 500
or a traceback in the log (the ``logs`` fixture fails the test on either);
each gets the 4xx that fits, or a closed connection; the gateway serves a
normal request afterwards.
"""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from txfanout.channel import MAX_HEAD_BYTES, MAX_HEADERS, MAX_LINE_BYTES

from .conftest import keep_alive_client, raw_client, route_config, within
from .hostile import logs  # noqa: F401 - fixture
from .test_overload import drip


def request(path: bytes = b"/bid", body: bytes = b"{}", method: bytes = b"POST",
            headers: bytes = b"", close: bool = True, length: bool = True) -> bytes:
    """One HTTP/1.1 request, byte for byte (``Connection: close`` by default,
    so that the gateway ends the exchange)."""
    head = method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\n" + headers
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def parse_responses(data: bytes, to_head: bool = False) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split what the gateway sent into (status, headers, body) triples
    (``to_head``: answers to HEAD, without bodies)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if status < 200 or to_head else int(headers.get(b"content-length", b"0"))
        body, data = data[:length], data[length:]
        assert len(body) == length, "truncated body"
        out.append((status, headers, body))
    return out


async def exchange(address, data: bytes, timeout: float = 5.0):
    """Send ``data``; wait for the gateway to close; return its answers."""
    client = raw_client(address, data)
    return parse_responses(await within(client.closed, timeout), data.startswith(b"HEAD "))


@pytest.fixture
def gw(partner, make_gateway):
    return make_gateway(route_config(
        {"ok": {"url": partner.url("/ok")}},
        request_timeout_ms=300, idle_timeout_ms=2000))


async def still_serves(gw) -> None:
    answer = await gw.post()
    assert answer.code == 200 and answer.outcomes() == {"ok": "ok"}
    assert gw.gateway.admission.admitted == 0 and not gw.gateway.inflight


def error_of(response) -> str:
    status, headers, body = response
    assert headers[b"content-type"] == b"application/json", response
    return json.loads(body)["error"]


# -- one refusal, then the connection closes --------------------------------

REFUSED = {
    # Request smuggling: the body's length must be unambiguous.
    "content-length-and-chunked": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + request(), 400),
    "chunked-and-content-length": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n" + request(), 400),
    "two-content-lengths": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
        + request(), 400),
    "same-content-length-twice": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        400),
    "chunked-then-identity": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400),
    "identity-coding": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity\r\n\r\n" + request(),
        400),
    "chunked-comma-list": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400),
    "signed-content-length": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: +2\r\n\r\n{}", 400),
    "space-before-colon": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "bad-chunk-size": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n", 400),
    # Not HTTP/1.x.
    "garbage": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "http0.9": (b"GET /\r\n\r\n", 400),
    "no-header-colon": (b"POST /bid HTTP/1.1\r\nHost gw\r\n\r\n", 400),
    "bare-lf-request-line": (b"POST /bid HTTP/1.1\nHost: gw\r\n\r\n", 400),
    # NUL and bytes outside ASCII.
    "nul-in-path": (b"POST /bid\x00 HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    "high-byte-in-path": (b"POST /bid\xff HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    "nul-in-header-value": (request(headers=b"X-Country: U\x00S\r\n"), 400),
    "nul-in-header-name": (request(headers=b"X-Cou\x00ntry: US\r\n"), 400),
    "utf8-in-header-name": (request(headers=b"X-L\xc3\xa4nd: DE\r\n"), 400),
    # Header floods and long lines.
    "too-many-headers": (request(headers=b"".join(
        b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))), 431),
    "header-block-too-large": (request(headers=b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(MAX_HEAD_BYTES // 200 + 1))), 431),
    "header-line-too-long": (request(headers=b"X-Long: " + b"v" * MAX_LINE_BYTES + b"\r\n"),
                             431),
    "path-too-long": (request(path=b"/" + b"a" * MAX_LINE_BYTES), 414),
    "query-too-long": (request(path=b"/bid?" + b"q=1&" * (MAX_LINE_BYTES // 4)), 414),
    "request-line-never-ends": (b"POST /" + b"a" * (MAX_LINE_BYTES + 10), 414),
}


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
@pytest_twisted.ensureDeferred
async def test_refused_with_one_answer_and_closed(name, gw, logs):
    data, code = REFUSED[name]
    answers = await exchange(gw.address, data)
    assert [a[0] for a in answers] == [code], answers  # never a second request
    assert answers[0][1][b"connection"] == b"close"
    assert error_of(answers[0])
    assert gw.site.open_connections == 0
    assert counted(gw) == {("unknown" if name in NO_PATH else "bid", str(code)): 1}
    await still_serves(gw)


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
@pytest_twisted.ensureDeferred
async def test_answered_with_the_status_that_fits(name, gw, logs):
    data, code = ANSWERED[name]
    answers = await exchange(gw.address, data)
    assert [a[0] for a in answers] == [code], answers
    if code != 200 and not data.startswith(b"HEAD "):
        message = error_of(answers[0])
        assert "Traceback" not in message and "/" not in message  # no path, no URL
    assert gw.site.open_connections == 0
    await still_serves(gw)


@pytest_twisted.ensureDeferred
async def test_a_body_in_tiny_chunks_is_refused_with_a_413_that_says_why(gw, logs):
    answers = await exchange(gw.address, CHUNKED + b"1\r\n \r\n" * 65000)
    assert [a[0] for a in answers] == [413]
    assert error_of(answers[0]) == "body over 65536 bytes (chunk framing counted)"
    assert counted(gw) == {("bid", "413"): 1}


@pytest_twisted.ensureDeferred
async def test_body_longer_than_announced_is_the_next_request(gw, logs):
    # The bytes past Content-Length are parsed as the next request: here not
    # one, so 400 and close after the first answer.
    answers = await exchange(gw.address, request(close=False).replace(
        b"Content-Length: 2", b"Content-Length: 1") + b"EXTRA\r\n\r\n")
    assert [a[0] for a in answers] == [400, 400]  # "{" is not JSON; "}EXTRA" not a request
    answers = await exchange(gw.address, request(body=b"{}", close=False) + b"}{\r\n\r\n")
    assert [a[0] for a in answers] == [200, 400]


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(gw, logs):
    data = b"".join(request(close=i == 4, headers=b"X-Request-Id: req-%d\r\n" % i)
                    for i in range(5))
    answers = await exchange(gw.address, data)
    assert [a[0] for a in answers] == [200] * 5
    assert [a[1][b"x-request-id"] for a in answers] == [b"req-%d" % i for i in range(5)]
    # Refusals are in order too, and the first fatal one ends the connection.
    data = request(close=False) + request(path=b"/nope", close=False) \
        + b"POST /bid HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}" + request()
    answers = await exchange(gw.address, data)
    assert [a[0] for a in answers] == [200, 404, 400]


@pytest_twisted.ensureDeferred
async def test_expect_continue_over_the_cap_gets_only_the_413(gw, logs):
    data = b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n" \
           b"Content-Length: 1000000\r\n\r\n"
    answers = await exchange(gw.address, data)
    assert [a[0] for a in answers] == [413]
    data = b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nConnection: close\r\n" \
           b"Content-Length: 2\r\n\r\n"
    client = raw_client(gw.address, data)
    await within(Deferred.fromCoroutine(_until_received(client, b"100 Continue")))
    client.transport.write(b"{}")
    assert [a[0] for a in parse_responses(await within(client.closed))] == [100, 200]


async def _until_received(client, text: bytes) -> None:
    from .hostile import until
    await until(lambda: text in client.received)


# -- slow and incomplete requests: 408 after request_timeout_ms ---------------

SLOW = {
    "headers-a-byte-at-a-time": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nX-F: " + b"a" * 100, True),
    "body-a-byte-at-a-time": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 200\r\n\r\n"
                              + b" " * 200, True),
    "chunks-a-byte-at-a-time": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                                b"\r\n\r\n" + b"1\r\n \r\n" * 40, True),
    "request-line-only": (b"POST /bid HTTP/1.1\r\n", False),
    "headers-without-end": (b"POST /bid HTTP/1.1\r\nHost: gw\r\n", False),
    "body-shorter-than-announced": (b"POST /bid HTTP/1.1\r\nHost: gw\r\n"
                                    b"Content-Length: 100\r\n\r\n{\"a\": 1", False),
    "chunked-never-ends": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\n2\r\n{}\r\n", False),
    "expect-continue-then-nothing": (b"POST /bid HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue"
                                     b"\r\nContent-Length: 2\r\n\r\n", False),
    "complete-then-partial-pipelined": (request(close=False) + b"POST /bid HTTP/1.1\r\nHo",
                                        False),
}


@pytest.mark.parametrize("name", list(SLOW))
@pytest_twisted.ensureDeferred
async def test_slow_or_unfinished_requests_get_408(name, gw, logs):
    data, dripped = SLOW[name]
    started = time.monotonic()
    if dripped:
        received, took, unsent = await drip(gw.address, data)
        assert unsent > 0
    else:
        received = await within(raw_client(gw.address, data).closed)
        took = time.monotonic() - started
    codes = [a[0] for a in parse_responses(received)]
    assert codes[-1] == 408 and codes[:-1] in ([], [100], [200]), codes
    # Dripped, the request line is not even whole in time: no path yet.
    assert counted(gw)[("unknown" if dripped else "bid", "408")] == 1
    assert 0.25 < took < 2.0
    assert gw.site.open_connections == 0
    await still_serves(gw)


@pytest_twisted.ensureDeferred
async def test_silent_connections_are_closed_by_the_idle_timeout(partner, make_gateway, logs):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}, idle_timeout_ms=300))
    started = time.monotonic()
    assert await within(raw_client(gw.address, b"").closed) == b""
    assert 0.25 < time.monotonic() - started < 2.0


@pytest_twisted.ensureDeferred
async def test_hundreds_of_idle_connections_stay_bounded(partner, make_gateway, logs):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}},
                                   max_connections=100, idle_timeout_ms=300))
    peak = [0]
    opened = gw.site.connection_opened

    def counting():
        opened()
        peak[0] = max(peak[0], gw.site.open_connections)

    gw.site.connection_opened = counting
    clients = [raw_client(gw.address, b"") for _ in range(300)]
    results = await within(DeferredList([c.closed for c in clients], consumeErrors=True), 10)
    assert all(ok and data == b"" for ok, data in results)
    assert peak[0] == 100
    assert gw.site.open_connections == 0
    await still_serves(gw)


@pytest_twisted.ensureDeferred
async def test_keep_alive_client_that_sends_garbage_after_a_good_request(gw, logs):
    client = await keep_alive_client(gw.address)
    answer = await within(client.request(request(close=False)))
    assert answer.startswith(b"HTTP/1.1 200 ")
    client.transport.write(b"\x00\x01\x02 nonsense\r\n\r\n")
    rest = await within(client.closed)
    assert rest.startswith(b"HTTP/1.1 400 ")
