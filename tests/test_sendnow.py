"""send: a turn's writes to a connection leave together at the turn's end,
straight to the socket when nothing is queued, in order always."""

from __future__ import annotations

import socket
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from txfanout import _twisted, sendnow, upstream
from txfanout.pool import CallTransport
from txfanout.sendnow import flush, send, write_now

from .configs import route_config
from .loopback import RawClient, raw_client, within


class Writer(Protocol):
    """On connect, runs ``act(transport)``, notes what was left queued, and
    closes (unless its client is to)."""

    def __init__(self, act: Callable[[Any], None], queued: list[int], close: bool) -> None:
        self.act = act
        self.queued = queued
        self.close = close

    def connectionMade(self) -> None:
        self.act(self.transport)
        self.queued.append(self.transport._tempDataLen + len(self.transport.dataBuffer))
        if self.close:
            self.transport.loseConnection()


class Reader(RawClient):
    """Collects ``expected`` bytes, then closes."""

    def __init__(self, expected: int) -> None:
        super().__init__(b"")
        self.expected = expected

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if len(self.received) >= self.expected:
            self.transport.loseConnection()


async def served(act: Callable[[Any], None], expected: int | None = None,
                 act_closes: bool = False) -> tuple[bytes, int]:
    """What a client read from a server that ran ``act``, then closed (or,
    with ``expected``, that the client closed once it read that many bytes;
    or ``act`` closes); bytes it left queued."""
    queued: list[int] = []
    close = expected is None and not act_closes
    port = reactor.listenTCP(
        0, Factory.forProtocol(lambda: Writer(act, queued, close=close)),
        interface="127.0.0.1")
    try:
        client = RawClient(b"") if expected is None else Reader(expected)
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


@pytest.mark.parametrize("write", [write_now, send])
@pytest_twisted.ensureDeferred
async def test_behind_queued_bytes_it_queues_too(write: Callable[[Any, bytes], None]) -> None:
    def act(transport: Any) -> None:
        transport.write(b"first ")
        write(transport, b"second")

    received, queued = await served(act)
    assert received == b"first second" and queued == len(b"first second")


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_is_queued_in_order() -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than a socket buffer holds
    received, queued = await served(lambda t: write_now(t, big))
    assert received == big and 0 < queued < len(big)


@pytest_twisted.ensureDeferred
async def test_a_turns_writes_leave_together_at_its_end_in_one_send(monkeypatch) -> None:
    sends: list[bytes] = []

    def write_some(transport: Any, data: bytes) -> Any:
        sends.append(data)
        return transport.writeSomeData(data)

    monkeypatch.setattr(_twisted, "write_some", write_some)

    def act(transport: Any) -> None:
        send(transport, b"head ")
        send(transport, b"body")
        assert sends == []  # not yet: at the turn's end

    received, queued = await served(act, expected=len(b"head body"))
    assert received == b"head body" and queued == 0  # nothing was queued: no epoll_ctl
    assert sends == [b"head body"]


@pytest_twisted.ensureDeferred
async def test_a_turns_writes_before_a_close_leave_before_it() -> None:
    received, queued = await served(lambda t: (send(t, b"503 "), send(t, b"body")))
    assert received == b"503 body"


@pytest_twisted.ensureDeferred
async def test_a_timers_writes_flushed_before_its_close_leave_before_it() -> None:
    # A timer's send is gathered for a reactor call that runs after the next
    # poll, where Twisted would carry out the close first: flush sends it now.
    def act(transport: Any) -> None:
        def answer_and_close() -> None:
            send(transport, b"late answer")
            flush(transport)
            transport.loseConnection()

        reactor.callLater(0, answer_and_close)

    received, _ = await served(act, act_closes=True)
    assert received == b"late answer"


@pytest_twisted.ensureDeferred
async def test_bytes_twisted_queued_behind_gathered_ones_go_after_them() -> None:
    def act(transport: Any) -> None:
        send(transport, b"first ")
        transport.write(b"second ")  # Twisted's own, as its 100 Continue
        send(transport, b"third ")
        transport.write(b"fourth")

    received, queued = await served(act)
    assert received == b"first second third fourth"


@pytest_twisted.ensureDeferred
async def test_bytes_twisted_queued_after_the_last_gathered_ones_go_after_them() -> None:
    def act(transport: Any) -> None:
        send(transport, b"first ")
        send(transport, b"second ")
        transport.write(b"third")

    received, queued = await served(act)
    assert received == b"first second third"


def test_a_connection_lost_before_the_turns_end_costs_the_others_nothing(monkeypatch) -> None:
    sent: list[tuple[Any, bytes]] = []
    monkeypatch.setattr(sendnow, "_PLAIN_TCP", (FileDescriptor,))
    monkeypatch.setattr(_twisted, "write_some", lambda t, data: sent.append((t, data)) or len(data))
    here, there = socket.socketpair()
    lost, alive = FileDescriptor(reactor=reactor), FileDescriptor(reactor=reactor)
    lost.fileno = here.fileno  # a socket, until it is lost
    lost.connected = alive.connected = True
    try:
        send(lost, b"answer")
        lost.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # Twisted's own, behind it
        send(alive, b"answer")
        lost.connectionLost(Failure(ConnectionLost()))  # its peer reset it
        del lost.fileno  # as tcp.Connection does: no socket from now on
    finally:
        here.close()
        there.close()
    pending = sendnow._sending
    assert pending is not None
    pending.cancel()
    sendnow._send_gathered()  # the turn's end
    assert sent == [(alive, b"answer")]


def test_bytes_put_first_go_ahead_of_all_twisted_queued_even_half_sent() -> None:
    transport = FileDescriptor(reactor=MemoryReactor())
    transport.connected = True
    transport.write(b"later")
    transport.dataBuffer, transport.offset = b"--half ", 2  # "--" already sent
    _twisted.queue_first(transport, b"first ")
    assert b"".join(transport._tempDataBuffer) == b"first half later"
    assert transport._tempDataLen == len(b"first half later")
    assert transport.dataBuffer == b"" and transport.offset == 0


@pytest_twisted.ensureDeferred
async def test_a_gathered_send_the_kernel_does_not_take_whole_is_queued_in_order() -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than a socket buffer holds
    received, _ = await served(lambda t: (send(t, b"<"), send(t, big), send(t, b">")))
    assert received == b"<" + big + b">"


@pytest_twisted.ensureDeferred
async def test_an_answer_without_a_body_still_sends_its_head(partner, make_gateway) -> None:
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))
    client = raw_client(gw.address, b"HEAD /bid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = await within(client.closed)
    assert received.startswith(b"HTTP/1.1 405 ") and received.endswith(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_a_partner_request_leaves_in_the_turn_that_made_it_without_twisteds_queue(
        partner, make_gateway, monkeypatch) -> None:
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))
    assert (await gw.post()).outcomes() == {"ok": "ok"}  # now a connection is pooled
    carriers: list[Any] = []

    class Noted(upstream.BytesProducer):
        def startProducing(self, consumer: Any) -> Any:
            carriers.append(self.connection)
            return super().startProducing(consumer)

    monkeypatch.setattr(upstream, "BytesProducer", Noted)
    state = gw.gateway.snapshot.partners["ok"]
    call = gw.gateway.upstream.call(state.config, state.url, state.headers, b"{}", 1.0)
    [connection] = carriers
    assert connection._tempDataLen + len(connection.dataBuffer) - connection.offset == 0
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
