"""write_now: straight to the socket when nothing is queued, in order always."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport

from txfanout import upstream
from txfanout.pool import CallTransport
from txfanout import sendnow
from txfanout.sendnow import write_now

from .configs import route_config
from .loopback import RawClient, raw_client, within


class Writer(Protocol):
    """On connect, runs ``act(transport)``, notes what was left queued, closes."""

    def __init__(self, act: Callable[[Any], None], queued: list[int]) -> None:
        self.act = act
        self.queued = queued

    def connectionMade(self) -> None:
        self.act(self.transport)
        self.queued.append(self.transport._tempDataLen + len(self.transport.dataBuffer))
        self.transport.loseConnection()


async def served(act: Callable[[Any], None]) -> tuple[bytes, int]:
    """What a client read from a server that ran ``act``; bytes it left queued."""
    queued: list[int] = []
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Writer(act, queued)),
                             interface="127.0.0.1")
    try:
        client = RawClient(b"")
        reactor.connectTCP("127.0.0.1", port.getHost().port,
                           ClientFactory.forProtocol(lambda: client))
        received = await within(client.closed)
    finally:
        await port.stopListening()
    return received, queued[0]


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_written_at_once() -> None:
    received, queued = await served(lambda t: write_now(t, b"hello"))
    assert received == b"hello" and queued == 0


@pytest_twisted.ensureDeferred
async def test_behind_queued_bytes_it_queues_too() -> None:
    def act(transport: Any) -> None:
        transport.write(b"first ")
        write_now(transport, b"second")

    received, queued = await served(act)
    assert received == b"first second" and queued == len(b"first second")


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_is_queued_in_order() -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than a socket buffer holds
    received, queued = await served(lambda t: write_now(t, big))
    assert received == big and 0 < queued < len(big)


@pytest_twisted.ensureDeferred
async def test_an_answer_without_a_body_still_sends_its_head(partner, make_gateway) -> None:
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))
    client = raw_client(gw.address, b"HEAD /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = await within(client.closed)
    assert received.startswith(b"HTTP/1.1 405 ") and received.endswith(b"\r\n\r\n")


class Lag:
    recent = 0.0


@pytest.mark.parametrize("lag, sent_at_once", [(0.0, False), (sendnow.URGENT_LAG, True)])
@pytest_twisted.ensureDeferred
async def test_a_partner_request_leaves_at_once_while_the_reactor_lags(
        partner, make_gateway, monkeypatch, lag, sent_at_once) -> None:
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))
    assert (await gw.post()).outcomes() == {"ok": "ok"}  # now a connection is pooled
    carriers: list[Any] = []

    class Noted(upstream.BytesProducer):
        def startProducing(self, consumer: Any) -> Any:
            carriers.append(self.connection)
            return super().startProducing(consumer)

    monkeypatch.setattr(upstream, "BytesProducer", Noted)
    monkeypatch.setattr(Lag, "recent", lag)
    monkeypatch.setattr(sendnow, "_lag", Lag())
    state = gw.gateway.snapshot.partners["ok"]
    call = gw.gateway.upstream.call(state.config, state.url, state.headers, b"{}", 1.0)
    [connection] = carriers
    queued = connection._tempDataLen + len(connection.dataBuffer) - connection.offset
    assert (queued == 0) is sent_at_once, queued
    assert (await within(call)).outcome == "ok"


def test_a_call_sends_its_request_in_one_write_then_writes_through() -> None:
    transport = StringTransport()
    call = CallTransport(transport)
    call.writeSequence([b"POST / HTTP/1.1\r\n", b"\r\n"])
    call.write(b"{}")
    assert transport.value() == b""
    call.flush()
    assert transport.value() == b"POST / HTTP/1.1\r\n\r\n{}"
    call.write(b"more")
    assert transport.value().endswith(b"{}more")


def test_a_pause_undone_before_the_chunk_is_handled_never_reaches_the_transport() -> None:
    transport = StringTransport()
    call = CallTransport(transport)
    call.pauseProducing()  # the response head is in ...
    call.resumeProducing()  # ... and its body was asked for at once
    call.settle()
    assert transport.producerState == "producing"
    call.pauseProducing()  # a body nobody asked for yet: a real pause
    call.settle()
    assert transport.producerState == "paused"
    call.resumeProducing()
    assert transport.producerState == "producing"
