"""A connection's first request, waiting in the listening socket's backlog:
its deadline counts from when the kernel received it (backlog.py), and one
that waited its deadline out there gets a quick 503, not a late 200.

The wait is the kernel's own (``TCP_INFO``), so these run over real
loopback sockets, the gateway's port held shut while real time passes: the
time waited is what is under test, not a way to wait for something."""

from __future__ import annotations

import json
import re
import socket
import struct
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from txfanout import backlog
from txfanout.admission import SHED_BACKLOG, Admission
from txfanout.config import ServerConfig
from txfanout.lag import ReactorLag

from .configs import route_config
from .loopback import keep_alive_client, raw_client, within

linux_only = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")


def test_a_request_that_waited_past_its_last_call_start_is_refused_backlog():
    # deadline 100 ms, less reserve_ms and min_call_ms (5 each): 90 ms.
    server = ServerConfig(deadline_ms=100, reserve_ms=5, min_call_ms=5)
    admission = Admission(Clock(), ReactorLag(Clock()), server)
    assert admission.shed_reason(0.089) is None
    assert admission.shed_reason(0.091) == SHED_BACKLOG
    admission.configure(ServerConfig(deadline_ms=200, reserve_ms=5, min_call_ms=5))
    assert admission.shed_reason(0.091) is None


@linux_only
def test_waited_is_the_kernels_age_of_the_bytes_received_before_accept():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        silent = socket.create_connection(listener.getsockname())
        speaking = socket.create_connection(listener.getsockname())
        sent = time.monotonic()
        speaking.sendall(b"POST / HTTP/1.1\r\n\r\n")
        accepted = [listener.accept()[0] for _ in range(2)]
        elapsed = time.monotonic() - sent
        try:
            got = [backlog.waited(backlog.tcp_info(_Handle(s))) for s in accepted]
            assert got[0] is None  # connected, nothing sent: no request is waiting
            assert got[1] is not None and 0.0 <= got[1] <= elapsed + 0.01
        finally:
            for s in accepted + [silent, speaking]:
                s.close()


def test_waited_is_unknown_without_a_tcp_socket_of_its_own():
    assert backlog.tcp_info(StringTransport()) is None  # no getHandle: a fake, or TLS
    left, right = socket.socketpair()  # a Unix socket: no TCP_INFO
    with left, right:
        right.sendall(b"x")
        assert backlog.tcp_info(_Handle(left)) is None
    assert backlog.waited(None) is None and not backlog.abandoned(None)


@linux_only
@pytest.mark.parametrize("how", ["fin", "reset"])
def test_abandoned_is_a_client_that_closed_before_accept(how: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        gone = socket.create_connection(listener.getsockname())
        gone.sendall(KEEP_ALIVE)
        if how == "reset":
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        live = socket.create_connection(listener.getsockname())
        live.sendall(KEEP_ALIVE)
        accepted = [listener.accept()[0] for _ in range(2)]
        try:
            assert [backlog.abandoned(backlog.tcp_info(_Handle(s))) for s in accepted] == \
                [True, False]
        finally:
            for s in accepted + [live]:
                s.close()


class _Handle:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


KEEP_ALIVE = b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
CLOSE = b"POST /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


def call_latency_ms(raw: bytes) -> float:
    assert raw.startswith(b"HTTP/1.1 200 "), raw
    [result] = json.loads(raw.split(b"\r\n\r\n", 1)[1])["results"]
    assert result["outcome"] == "timeout"
    return float(result["latency_ms"])


@linux_only
@pytest_twisted.ensureDeferred
async def test_a_first_request_counts_its_deadline_from_the_kernels_receipt(
        partner, make_gateway):
    gw = make_gateway(route_config({"hang": {"url": partner.url("/hang"), "timeout_ms": 1000}},
                                   deadline_ms=300, max_inflight=50))
    gw.gateway.lag.start()  # the limit follows the loop's lag, as in the daemon
    try:
        await backlogged_clients(gw)
    finally:
        gw.gateway.lag.stop()
    # What the waiting clients chose moved nothing every request shares.
    assert gw.gateway.admission.limit.current == 50


async def backlogged_clients(gw) -> None:
    gw.port.stopReading()  # the gateway takes no new connection: they wait in the backlog
    stale = await keep_alive_client(gw.address)
    stale_answer = stale.request(KEEP_ALIVE)
    closing = raw_client(gw.address, CLOSE)
    # Real time in the backlog is what is under test (the kernel stamps
    # what it receives), not a wait for an event: too little of it fails.
    await deferLater(reactor, 0.2, lambda: None)
    late = await keep_alive_client(gw.address)
    late_answer = late.request(KEEP_ALIVE)
    await deferLater(reactor, 0.15, lambda: None)
    gw.port.startReading()
    # 350 ms in the backlog, past the 290 its deadline leaves for a call:
    # refused at once, its connection kept; asked again, it is served whole.
    raw = await within(stale_answer)
    assert raw.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in raw, raw
    assert b"waited out its deadline" in raw and b"Connection: close" not in raw
    assert gw.gateway.metrics.registry.get_sample_value(
        "txfanout_shed_total", {"reason": SHED_BACKLOG}) == 1
    assert call_latency_ms(await within(stale.request(KEEP_ALIVE))) > 200
    # 150 ms in the backlog: served, its call given what the deadline left
    # (300 - 150 - 5 ms, the kernel's clock ticking by a few ms), not 295.
    assert call_latency_ms(await within(late_answer)) <= 160
    # A client that closes its connection would ask again through the same
    # backlog: served, its deadline counted from when it was read.
    assert call_latency_ms(await within(closing.closed)) > 200
    stale.transport.loseConnection()
    late.transport.loseConnection()


@linux_only
@pytest_twisted.ensureDeferred
async def test_a_connection_its_client_closed_in_the_backlog_is_dropped_unread(
        partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))
    gw.port.stopReading()  # both wait in the backlog
    with socket.create_connection(gw.address) as gone:  # a client that timed out there
        gone.sendall(KEEP_ALIVE)
    live = await keep_alive_client(gw.address)
    answer = live.request(KEEP_ALIVE)
    gw.port.startReading()
    assert (await within(answer)).startswith(b"HTTP/1.1 200 ")
    live.transport.loseConnection()
    # Neither served and cancelled (499), nor refused (503): closed unread.
    answered = re.findall(rb'txfanout_requests_total\{code="(\d+)"', gw.gateway.metrics.exposition())
    assert answered == [b"200"]  # the live one
    assert partner.seen == 1
    metrics = gw.gateway.metrics.registry
    assert metrics.get_sample_value("txfanout_abandoned_in_backlog_total") == 1
