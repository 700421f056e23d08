"""Random bytes, request heads and bodies thrown at a running gateway.

The gateway is a real ``twistd fanout`` process. Each example opens a
connection, sends what hypothesis made, half-closes and reads until the
gateway closes. Whatever it was, the gateway never answers 500, holds
nothing for it afterwards (its in-flight count, read on the admin face, is
back to zero), and still serves a normal request; at the end its log has no
traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .daemon import Daemon, free_port

# A real daemon, and hundreds of examples over real sockets.
pytestmark = [pytest.mark.slow, pytest.mark.runtime_neutral]

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Mostly well-formed, so that most examples get past the parser to routing,
# targeting, JSON and the fan-out; the rest is junk for the parser itself.
METHODS = st.sampled_from([b"POST"] * 6 + [b"GET", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT",
                                           b"post", b"P\x00ST", b"X" * 300])
VERSIONS = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 x", b""])
PATHS = st.one_of(
    st.sampled_from([b"/bid", b"/bid?x=1&y=%ff", b"/nope", b"/", b"*", b"/../bid", b"/%ff",
                     b"/bid%00", b"//bid", b"/metrics", b"http://evil/bid", b"/bid\x80",
                     b"/" + b"a" * 9000]),
    st.binary(min_size=1, max_size=60),
    st.text(min_size=1, max_size=40).map(lambda t: ("/" + t).encode("utf-8")))
NAMES = st.sampled_from([b"Host", b"X-Country", b"X-OS", b"X-Fanout-Deadline-Ms",
                         b"X-Request-Id", b"Expect", b"Connection", b"User-Agent",
                         b"Content-Type", b"Upgrade", b"Cookie", b"X-Forwarded-Host"])
FRAMING = st.sampled_from([b"Content-Length", b"Transfer-Encoding"])
JUNK_NAMES = st.one_of(st.sampled_from([b"Bad Name", b"X\x00", b"", b"\xff"]),
                       st.binary(max_size=20))
VALUES = st.one_of(
    st.sampled_from([b"0", b"2", b"-1", b"99999999999999999999", b"chunked", b"identity",
                     b"chunked, gzip", b"100-continue", b"close", b"keep-alive", b"US", b"us",
                     b"USA", b"ios", b"Android", b"\xff\xfe", b"", b"x" * 9000, b"1e3",
                     b"\xc3\xa4\xc3\xa4", b"a\x00b"]),
    st.binary(max_size=40).filter(lambda v: b"\n" not in v and b"\r" not in v),
    st.binary(max_size=40))
BODIES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"{}", b"[" * 5000, b"1" * 6000, b'{"device": {"os": 1}}',
                     b'{"device": {"geo": {"country": "\xff\xfe"}, "os": "ios"}}',
                     b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()))


@st.composite
def requests(draw) -> bytes:
    """One request, usually well-formed, sometimes broken anywhere."""
    line = draw(METHODS) + b" " + draw(PATHS) + b" " + draw(VERSIONS)
    names = st.one_of(NAMES, NAMES, NAMES, FRAMING, JUNK_NAMES)
    headers = draw(st.lists(st.tuples(names, VALUES), max_size=6))
    body = draw(BODIES)
    if draw(st.integers(0, 3)):
        headers.append((b"Content-Length", b"%d" % len(body)))
    sep = draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"]))
    head = sep.join([line] + [n + b": " + v for n, v in headers])
    return head + sep + sep + body


CONFIG = """
[server]
deadline_ms = 200
request_timeout_ms = 2000
max_body_bytes = 8192

[partners.fast]
url = "http://127.0.0.1:{port}/fast"

[partners.normal]
url = "http://127.0.0.1:{port}/normal"

[routes.bid]
partners = ["fast", "normal"]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Daemon]:
    demo_port = free_port()
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.toml"
    path.write_text(CONFIG.format(port=demo_port))
    daemon = Daemon("--config", str(path), "--demo", "--demo-port", str(demo_port))
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        code = daemon.stop()
    log = "".join(daemon.log)
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log and "Unhandled" not in log, log


def throw(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, return all the gateway sent until it
    closed (a reset counts as a close)."""
    received = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # it closed first (refused the request early)
            pass
        try:
            while chunk := s.recv(65536):
                received.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(received)


def inflight(daemon: Daemon) -> int:
    url = f"http://127.0.0.1:{daemon.admin_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(json.load(response)["inflight"])


def check(daemon: Daemon, data: bytes) -> None:
    received = throw(daemon.port, data)
    assert received == b"" or received.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), received[:80]
    assert b"HTTP/1.1 500 " not in received and b"HTTP/1.0 500 " not in received
    assert inflight(daemon) == 0


def serves(daemon: Daemon) -> bool:
    request = urllib.request.Request(daemon.url("/bid"), data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        answer = json.load(response)
    return [r["outcome"] for r in answer["results"]] == ["ok", "ok"]


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes(gateway, data):
    check(gateway, data)


@FUZZ
@given(data=requests())
def test_random_requests(gateway, data):
    check(gateway, data)


@FUZZ
@given(first=requests(), second=requests(), cut=st.integers(0, 400))
def test_random_pipelines_and_truncations(gateway, first, second, cut):
    check(gateway, first + second[:cut])


def test_still_healthy_after_the_storm(gateway):
    assert serves(gateway)
    assert inflight(gateway) == 0
