"""Partners that misbehave byte for byte (tests/rawpartners.py).

For every fault the affected call gets a precise outcome, the healthy
partner in the same request is unaffected, nothing is logged as a failure,
the partner's secret header is seen nowhere, and the connection the fault
was on is closed (nothing keeps streaming, nothing leaks).

The partners, the gateway and its pool run in memory on a fake clock
(tests/fakes.py): a call that times out does so at its timeout_ms exactly,
and what the pool does with each connection is seen as it happens. Two
cases stay on real loopback sockets, where the socket is what they test:
a connection whose FIN the reactor has not read yet (the peek before
reuse), and a name that does not resolve (the reactor's resolver).
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from txfanout.pool import MAX_RESPONSE_HEAD_BYTES
from txfanout.upstream import pool_key

from .configs import route_config
from .fakes import FakeGateway, Network
from .hostile import SECRET
from .loopback import within
from .rawpartners import RawPartner, gzip_bomb

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


def in_memory(net: Network, path: str, **extra) -> tuple[FakeGateway, RawPartner]:
    """A gateway calling a healthy partner and the raw partner's ``path``."""
    raw = net.raw_partner()
    config = with_healthy(net.partner(), raw.url(path))
    config["partners"]["faulty"].update(extra)
    return net.gateway(config), raw


def idle_of(gw, name: str = "faulty") -> list:
    """The idle connections the pool keeps for partner ``name``."""
    key = pool_key(gw.gateway.snapshot.partners[name].config)
    return gw.gateway.upstream.pool.idle_connections().get(key, [])


def result_of(answer, name: str = "faulty") -> dict:
    assert answer.code == 200, answer.body
    assert SECRET.encode() not in answer.body
    results = {r["partner"]: r for r in answer.json["results"]}
    assert results["healthy"]["outcome"] == "ok", results["healthy"]
    return results[name]


@pytest.mark.parametrize("path, outcome, error", CASES, ids=[c[0][1:] for c in CASES])
def test_partner_fault(path, outcome, error, net, logs):
    gw, raw = in_memory(net, path)
    result = result_of(gw.post())
    assert (result["outcome"], result["error"]) == (outcome, error)
    assert result["status"] is None and result["body"] is None
    if outcome == "timeout":
        assert result["latency_ms"] == TIMEOUT_MS
    assert raw.requests == [path.encode()]
    assert raw.open == set() and raw.connections == 1  # the faulty connection was closed
    assert not gw.gateway.inflight and gw.gateway.admission.admitted == 0
    assert all(p.slots.inflight == 0 for p in gw.gateway.snapshot.partners.values())
    assert idle_of(gw) == []


def test_a_status_out_of_range_counts_against_the_breaker(net, logs):
    gw, raw = in_memory(net, "/status-negative", breaker_failures=2, breaker_cooldown_ms=60000)
    for _ in range(2):
        assert result_of(gw.post())["outcome"] == "error"
    assert result_of(gw.post())["outcome"] == "open"
    assert raw.requests == [b"/status-negative"] * 2


def test_a_chunked_answer_within_the_cap_framing_counted_is_read(net, logs):
    # 600 bytes in two chunks of 300: 2 x 307 + 256 (the last chunk) counted.
    gw, raw = in_memory(net, "/fitting-chunks")
    for _ in range(2):
        result = result_of(gw.post())
        assert (result["outcome"], result["body"]) == ("ok", "x" * 600)
    assert raw.connections == 1  # and the connection is kept


def test_refused_connection(net, logs):
    gw = net.gateway(with_healthy(net.partner(), net.refused_url()))
    result = result_of(gw.post())
    assert (result["outcome"], result["error"]) == ("error", "connection refused")
    assert result["latency_ms"] == 0.0  # not left to time out


@pytest_twisted.ensureDeferred
async def test_unresolvable_name_fails_fast(partner, make_gateway, logs, local_names):
    gw = make_gateway(with_healthy(partner, "http://partner.invalid:80/bid"))
    answer = await gw.post()
    result = result_of(answer)
    assert (result["outcome"], result["error"]) == ("error", "DNS lookup failed")
    assert result["latency_ms"] < TIMEOUT_MS  # not left to time out
    assert local_names.asked == ["partner.invalid"]
    assert "partner.invalid" not in answer.body.decode()


def test_partner_closing_every_connection_after_one_answer(net, logs):
    gw, raw = in_memory(net, "/close-after-one")
    for _ in range(5):
        result = result_of(gw.post())
        assert (result["outcome"], result["body"]) == ("ok", "ok")
        assert raw.open == set()
    assert raw.connections == 5


def test_bytes_after_a_response_are_never_read_as_the_next_answer(net, logs):
    gw, raw = in_memory(net, "/trailing-bytes")
    for _ in range(3):
        result = result_of(gw.post())
        assert (result["outcome"], result["body"]) == ("ok", "ok")  # never "fake"
        assert raw.open == set()  # that connection is not kept
    assert raw.connections == 3


def pooled(gw) -> list:
    return [c for cs in gw.gateway.upstream.pool._connections.values() for c in cs]


def test_pooled_connection_closed_by_the_partner_while_idle(net, logs):
    gw, raw = in_memory(net, "/ok")
    assert result_of(gw.post())["outcome"] == "ok"
    [server_side] = raw.open
    [idle] = idle_of(gw)
    server_side.transport.loseConnection()  # the partner's keep-alive timer
    net.run()
    # Twisted's pool sees the FIN while the connection is idle...
    assert raw.open == set() and idle.state == "CONNECTION_LOST"
    # ... and does not hand that connection out again.
    assert result_of(gw.post())["outcome"] == "ok"
    assert raw.connections == 2 and len(raw.requests) == 2


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


def test_connection_closed_after_the_request_was_sent_is_an_error_not_a_retry(net, logs):
    # The partner read the second request on the kept connection and then
    # closed it: it may have acted on it, so the POST is not sent again.
    gw, raw = in_memory(net, "/close-on-second")
    assert result_of(gw.post())["outcome"] == "ok"
    result = result_of(gw.post())
    assert (result["outcome"], result["error"]) == \
        ("error", "connection closed before any answer")
    assert raw.requests == [b"/close-on-second"] * 2 and raw.connections == 1
    assert result_of(gw.post())["outcome"] == "ok"  # a fresh connection
    assert raw.connections == 2


def test_partner_cookies_are_neither_kept_nor_sent(net, logs):
    gw, raw = in_memory(net, "/set-cookie")
    for _ in range(3):
        assert result_of(gw.post())["outcome"] == "ok"
    assert len(raw.heads) == 3
    assert not any(b"\r\ncookie:" in head.lower() for head in raw.heads)


def test_compressed_bodies_are_not_inflated(net, logs):
    # 64 KiB on the wire, 64 MiB inflated: the cap counts what was sent, and
    # the partner was never asked for a content coding.
    raw = net.raw_partner()
    config = with_healthy(net.partner(), raw.url("/gzip-bomb"))
    config["partners"]["roomy"] = faulty(raw.url("/gzip-bomb"), max_response_bytes=1 << 20)
    config["routes"]["bid"]["partners"].append("roomy")
    gw = net.gateway(config)
    answer = gw.post()
    assert result_of(answer)["outcome"] == "too_large"  # 1000 bytes allowed
    roomy = result_of(answer, "roomy")
    assert roomy["outcome"] == "ok" and 1000 < len(roomy["body"]) <= len(gzip_bomb())
    assert len(raw.heads) == 2
    assert not any(b"accept-encoding" in head.lower() for head in raw.heads)
