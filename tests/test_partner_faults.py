"""Partners that misbehave, each a real loopback server.

For every fault the affected call gets a precise outcome, the healthy
partner in the same request is unaffected, nothing is logged as a failure,
the partner's secret header is seen nowhere, and the connection the fault
was on is closed (nothing keeps streaming, nothing leaks).
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from txfanout.pool import MAX_RESPONSE_HEAD_BYTES

from .configs import route_config
from .hostile import SECRET, until
from .loopback import within
from .partners import refused_url
from .rawpartners import GZIP_BOMB

TIMEOUT_MS = 150
MALFORMED = "malformed HTTP response"
HEAD_TOO_LARGE = f"response headers over {MAX_RESPONSE_HEAD_BYTES} bytes"
NO_ANSWER = f"no answer in {TIMEOUT_MS} ms"
FRAMED_TOO_LARGE = "body over 1000 bytes (chunk framing counted)"

CASES = [
    # (path on the raw partner, outcome, error text)
    ("/silent", "timeout", NO_ANSWER),
    ("/stall-after-headers", "timeout", NO_ANSWER),
    ("/drip", "timeout", NO_ANSWER),
    ("/continue-stall", "timeout", NO_ANSWER),
    ("/close-mid-body", "error", "connection closed before the answer was complete"),
    ("/reset-mid-body", "error", "connection reset"),
    ("/garbage-status", "error", MALFORMED),
    ("/garbage-line", "error", MALFORMED),
    ("/status-negative", "error", MALFORMED),
    ("/status-999", "error", MALFORMED),
    ("/status-huge", "error", MALFORMED),
    ("/status-underscore", "error", MALFORMED),
    ("/bad-chunked", "error", MALFORMED),
    ("/conflicting-length", "error", MALFORMED),
    ("/length-and-chunked", "error", MALFORMED),
    ("/unknown-encoding", "error", MALFORMED),
    ("/huge-length", "too_large", "body over 1000 bytes"),
    ("/huge-close-delimited", "too_large", "body over 1000 bytes"),
    ("/huge-chunked", "too_large", FRAMED_TOO_LARGE),  # refused at its first size line
    # 20 bytes of data, but each chunk counts as at least 256 bytes.
    ("/tiny-chunks", "too_large", FRAMED_TOO_LARGE),
    ("/long-chunk-extensions", "too_large", FRAMED_TOO_LARGE),
    ("/huge-trailers", "too_large", FRAMED_TOO_LARGE),
    ("/continue-flood", "error", HEAD_TOO_LARGE),
    ("/huge-headers", "error", HEAD_TOO_LARGE),
    ("/huge-header-line", "error", HEAD_TOO_LARGE),
]


def faulty(url: str, **extra):
    return {"url": url, "timeout_ms": TIMEOUT_MS, "max_response_bytes": 1000,
            "breaker_failures": 0, "headers": {"X-Api-Key": SECRET}, **extra}


def with_healthy(partner, url: str) -> dict:
    return route_config({"healthy": faulty(partner.url("/ok")), "faulty": faulty(url)},
                        deadline_ms=3000)


def result_of(answer, name: str = "faulty") -> dict:
    assert answer.code == 200, answer.body
    assert SECRET.encode() not in answer.body
    results = {r["partner"]: r for r in answer.json["results"]}
    assert results["healthy"]["outcome"] == "ok", results["healthy"]
    return results[name]


@pytest.mark.parametrize("path, outcome, error", CASES, ids=[c[0][1:] for c in CASES])
@pytest_twisted.ensureDeferred
async def test_partner_fault(path, outcome, error, partner, raw_partner, make_gateway, logs):
    gw = make_gateway(with_healthy(partner, raw_partner.url(path)))
    result = result_of(await gw.post())
    assert (result["outcome"], result["error"]) == (outcome, error)
    assert result["status"] is None and result["body"] is None
    assert raw_partner.requests == [path.encode()]
    await within(raw_partner.idle(), 2)  # the gateway closed the faulty connection
    assert not gw.gateway.inflight and gw.gateway.admission.admitted == 0
    assert all(p.slots.inflight == 0 for p in gw.gateway.snapshot.partners.values())


@pytest_twisted.ensureDeferred
async def test_a_status_out_of_range_counts_against_the_breaker(partner, raw_partner,
                                                                make_gateway, logs):
    gw = make_gateway(route_config({
        "healthy": faulty(partner.url("/ok")),
        "faulty": faulty(raw_partner.url("/status-negative"), breaker_failures=2,
                         breaker_cooldown_ms=60000)}, deadline_ms=3000))
    for _ in range(2):
        assert result_of(await gw.post())["outcome"] == "error"
    assert result_of(await gw.post())["outcome"] == "open"
    assert raw_partner.requests == [b"/status-negative"] * 2


@pytest_twisted.ensureDeferred
async def test_a_chunked_answer_within_the_cap_framing_counted_is_read(
        partner, raw_partner, make_gateway, logs):
    # 600 bytes in two chunks of 300: 2 x 307 + 256 (the last chunk) counted.
    gw = make_gateway(with_healthy(partner, raw_partner.url("/fitting-chunks")))
    for _ in range(2):
        result = result_of(await gw.post())
        assert (result["outcome"], result["body"]) == ("ok", "x" * 600)
    assert raw_partner.connections == 1  # and the connection is kept


@pytest_twisted.ensureDeferred
async def test_refused_connection(partner, make_gateway, logs):
    gw = make_gateway(with_healthy(partner, refused_url()))
    result = result_of(await gw.post())
    assert (result["outcome"], result["error"]) == ("error", "connection refused")


@pytest_twisted.ensureDeferred
async def test_unresolvable_name_fails_fast(partner, make_gateway, logs, local_names):
    gw = make_gateway(with_healthy(partner, "http://partner.invalid:80/bid"))
    answer = await gw.post()
    result = result_of(answer)
    assert (result["outcome"], result["error"]) == ("error", "DNS lookup failed")
    assert result["latency_ms"] < TIMEOUT_MS  # not left to time out
    assert local_names.asked == ["partner.invalid"]
    assert "partner.invalid" not in answer.body.decode()


@pytest_twisted.ensureDeferred
async def test_partner_closing_every_connection_after_one_answer(partner, raw_partner,
                                                                 make_gateway, logs):
    gw = make_gateway(with_healthy(partner, raw_partner.url("/close-after-one")))
    for _ in range(5):
        result = result_of(await gw.post())
        assert (result["outcome"], result["body"]) == ("ok", "ok")
        await within(raw_partner.idle(), 2)
    assert raw_partner.connections == 5


@pytest_twisted.ensureDeferred
async def test_bytes_after_a_response_are_never_read_as_the_next_answer(
        partner, raw_partner, make_gateway, logs):
    gw = make_gateway(with_healthy(partner, raw_partner.url("/trailing-bytes")))
    for _ in range(3):
        result = result_of(await gw.post())
        assert (result["outcome"], result["body"]) == ("ok", "ok")  # never "fake"
        await within(raw_partner.idle(), 2)  # that connection is not kept
    assert raw_partner.connections == 3


def pooled(gw) -> list:
    return [c for cs in gw.gateway.upstream.pool._connections.values() for c in cs]


@pytest_twisted.ensureDeferred
async def test_pooled_connection_closed_by_the_partner_while_idle(partner, raw_partner,
                                                                  make_gateway, logs):
    gw = make_gateway(with_healthy(partner, raw_partner.url("/ok")))
    assert result_of(await gw.post())["outcome"] == "ok"
    [server_side] = raw_partner.open
    server_side.transport.loseConnection()  # the partner's keep-alive timer
    await within(raw_partner.idle(), 2)
    # Twisted's pool notices the FIN while the connection is idle...
    await until(lambda: any(c.state == "CONNECTION_LOST" for c in pooled(gw)))
    # ... and does not hand that connection out again.
    assert result_of(await gw.post())["outcome"] == "ok"
    assert raw_partner.connections == 2 and len(raw_partner.requests) == 2


@pytest_twisted.ensureDeferred
async def test_stale_connection_not_yet_seen_by_the_reactor_is_not_used(
        partner, raw_partner, make_gateway, logs):
    gw = make_gateway(with_healthy(partner, raw_partner.url("/ok")))
    assert result_of(await gw.post())["outcome"] == "ok"
    [server_side] = raw_partner.open
    # The FIN reaches the gateway's socket now, and the call starts in the
    # same reactor turn: the reactor has not read the FIN, the pool still
    # lists the connection as idle; the peek before reuse finds it closed.
    server_side.transport.getHandle().shutdown(socket.SHUT_WR)
    [idle] = [c for c in pooled(gw) if c.transport.getPeer().port == raw_partner.port.getHost().port]
    assert idle.state == "QUIESCENT"
    state = gw.gateway.snapshot.partners["faulty"]
    result = await within(gw.gateway.upstream.call(
        state.config, state.url, Headers({b"Content-Type": [b"application/json"]}), b"{}", 1.0))
    assert (result.outcome, result.body) == ("ok", "ok"), result
    assert raw_partner.connections == 2 and len(raw_partner.requests) == 2


@pytest_twisted.ensureDeferred
async def test_connection_closed_after_the_request_was_sent_is_an_error_not_a_retry(
        partner, raw_partner, make_gateway, logs):
    # The partner read the second request on the kept connection and then
    # closed it: it may have acted on it, so the POST is not sent again.
    gw = make_gateway(with_healthy(partner, raw_partner.url("/close-on-second")))
    assert result_of(await gw.post())["outcome"] == "ok"
    result = result_of(await gw.post())
    assert (result["outcome"], result["error"]) == \
        ("error", "connection closed before any answer")
    assert raw_partner.requests == [b"/close-on-second"] * 2 and raw_partner.connections == 1
    assert result_of(await gw.post())["outcome"] == "ok"  # a fresh connection
    assert raw_partner.connections == 2


@pytest_twisted.ensureDeferred
async def test_partner_cookies_are_neither_kept_nor_sent(partner, raw_partner, make_gateway,
                                                         logs):
    gw = make_gateway(with_healthy(partner, raw_partner.url("/set-cookie")))
    for _ in range(3):
        assert result_of(await gw.post())["outcome"] == "ok"
    assert len(raw_partner.heads) == 3
    assert not any(b"\r\ncookie:" in head.lower() for head in raw_partner.heads)


@pytest_twisted.ensureDeferred
async def test_compressed_bodies_are_not_inflated(partner, raw_partner, make_gateway, logs):
    # 64 KiB on the wire, 64 MiB inflated: the cap counts what was sent, and
    # the partner was never asked for a content coding.
    config = with_healthy(partner, raw_partner.url("/gzip-bomb"))
    config["partners"]["roomy"] = faulty(raw_partner.url("/gzip-bomb"),
                                         max_response_bytes=1 << 20)
    config["routes"]["bid"]["partners"].append("roomy")
    gw = make_gateway(config)
    answer = await gw.post()
    assert result_of(answer)["outcome"] == "too_large"  # 1000 bytes allowed
    roomy = result_of(answer, "roomy")
    assert roomy["outcome"] == "ok" and 1000 < len(roomy["body"]) <= len(GZIP_BOMB)
    assert len(raw_partner.heads) == 2
    assert not any(b"accept-encoding" in head.lower() for head in raw_partner.heads)
