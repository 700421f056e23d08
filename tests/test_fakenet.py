"""The in-memory network (tests/fakes.py) behaves as the tests that use it
assume a TCP connection and a listening port do."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from txfanout.pool import peer_closed, unread_bytes

from .fakes import Client, Network


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Recorder(Protocol):
    """The server side of a connection: what it read, and how it ended."""

    def __init__(self, seen: list["Recorder"]) -> None:
        seen.append(self)
        self.received = b""
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.reason = reason


class Greeter(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"x" * 100_000)
        self.transport.loseConnection()


def test_bytes_go_both_ways_and_a_close_follows_them(net):
    port = net.listen(Factory.forProtocol(Echo))
    client = net.client(("127.0.0.1", port.getHost().port), b"hello")
    net.run()
    assert client.received == b"hello" and not client.closed
    client.send(b" again")
    net.run()
    assert client.received == b"hello again"
    client.close()
    net.run()
    assert client.closed and client.reason.check(ConnectionDone)


def test_what_was_written_before_a_close_arrives_in_reads_of_64_kib_at_most(net):
    reads = []
    port = net.listen(Factory.forProtocol(Greeter))
    client = net.client(("127.0.0.1", port.getHost().port))
    client.dataReceived = lambda data: reads.append(len(data))
    net.run()
    assert reads == [65536, 100_000 - 65536] and client.closed


def test_a_paused_reader_gets_nothing_until_it_resumes():
    net = Network()
    servers: list[Recorder] = []
    port = net.listen(Factory.forProtocol(lambda: Recorder(servers)))
    client = net.client(("127.0.0.1", port.getHost().port))
    net.run()
    [server] = servers
    server.transport.pauseProducing()
    client.send(b"abc")
    client.close()
    net.run()
    assert server.received == b"" and server.reason is None  # not even the close
    assert server.transport.unread() == 3
    server.transport.resumeProducing()
    net.run()
    assert server.received == b"abc" and server.reason.check(ConnectionDone)


def test_an_abort_drops_what_is_unsent_and_the_peer_sees_a_reset(net):
    servers: list[Recorder] = []
    port = net.listen(Factory.forProtocol(lambda: Recorder(servers)))
    client = net.client(("127.0.0.1", port.getHost().port), b"sent")
    net.run()
    client.send(b"unsent")
    client.abort()
    net.run()
    [server] = servers
    assert server.received == b"sent"
    assert type(server.reason.value) is ConnectionLost
    assert client.reason.check(ConnectionAborted)


def test_a_port_accepts_in_batches_and_not_while_it_stops_reading(net):
    servers: list[Recorder] = []
    port = net.listen(Factory.forProtocol(lambda: Recorder(servers)))
    port.numberAccepts = 2
    clients = [net.client(("127.0.0.1", port.getHost().port), b"x") for _ in range(5)]
    port.stopReading()
    net.run()
    assert servers == [] and not any(c.closed for c in clients)  # in the backlog
    port.startReading()
    net.run()
    assert len(servers) == 5 and all(s.received == b"x" for s in servers)


class Refusing(Factory):
    def buildProtocol(self, addr):
        return None


def test_a_factory_that_builds_nothing_closes_the_connection(net):
    port = net.listen(Refusing())
    client = net.client(("127.0.0.1", port.getHost().port), b"x")
    net.run()
    assert client.closed and client.received == b""


def test_connections_the_reactor_makes_reach_a_listener_or_are_refused(net):
    servers: list[Recorder] = []
    port = net.listen(Factory.forProtocol(lambda: Recorder(servers)))
    failed = []

    class Dialer(ClientFactory):
        protocol = Echo

        def clientConnectionFailed(self, connector, reason) -> None:
            failed.append(reason)

    net.clock.connectTCP("127.0.0.1", port.getHost().port, Dialer())
    net.clock.connectTCP("127.0.0.1", 1, Dialer())
    net.run()
    assert len(servers) == 1
    [refused] = failed
    assert "refused" in str(refused.value).lower()


def test_time_moves_from_one_timer_to_the_next_with_bytes_moved_in_between(net):
    port = net.listen(Factory.forProtocol(Echo))
    client = net.client(("127.0.0.1", port.getHost().port))
    seen = []
    net.clock.callLater(0.5, client.send, b"ping")
    net.clock.callLater(0.7, lambda: seen.append(client.received))
    started = net.clock.seconds()
    net.advance(1.0)
    assert seen == [b"ping"] and net.clock.seconds() == started + 1.0
    net.clock.callLater(2.5, client.close)
    assert net.until(lambda: client.closed) == pytest.approx(2.5)
    assert client.closed_at - started == pytest.approx(3.5)
    with pytest.raises(AssertionError, match="no timer left"):
        net.until(lambda: False)


def test_a_client_object_sees_what_came_since_it_last_looked():
    client = Client(clock=None)
    client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    [answer] = client.answers()
    assert (answer.code, answer.body) == (200, b"ok")
    assert client.take().endswith(b"ok") and client.received == b""


def peer_closed_of(transport) -> bool:
    class Connection:
        pass
    connection = Connection()
    connection.transport = transport
    return peer_closed(connection)


def test_the_kernel_peeks_see_unread_bytes_and_an_unseen_close(net):
    servers: list[Recorder] = []
    port = net.listen(Factory.forProtocol(lambda: Recorder(servers)))
    client = net.client(("127.0.0.1", port.getHost().port))
    net.run()
    [server] = servers
    server.transport.pauseProducing()
    assert not unread_bytes(server.transport) and not peer_closed_of(server.transport)
    client.send(b"x")
    assert unread_bytes(server.transport)  # sent, not yet moved: in the kernel
    net.run()
    assert unread_bytes(server.transport)  # moved, not read: still there
    server.transport.resumeProducing()
    net.run()
    assert not unread_bytes(server.transport)
    client.close()
    [link] = net.links_to(port)
    link.pump()  # the client's close, as far as the server's kernel
    assert peer_closed_of(server.transport) and server.reason is None
    net.run()
    assert server.reason is not None and server.transport.getHandle() is None


def test_a_timer_scheduled_for_now_by_a_timer_waits_for_the_io_of_the_turn(net):
    port = net.listen(Factory.forProtocol(Echo))
    client = net.client(("127.0.0.1", port.getHost().port))
    net.run()
    seen = []
    net.clock.callLater(1.0, lambda: (client.send(b"ping"),
                                      net.clock.callLater(0, lambda: seen.append(client.received))))
    net.advance(1.0)
    assert seen == [b"ping"]  # the echo was read before the second timer ran


def test_a_busy_callback_makes_time_pass_without_running_timers(net):
    ran = []
    net.clock.callLater(0.1, net.busy, 0.5)
    net.clock.callLater(0.2, lambda: ran.append(net.clock.seconds()))
    started = net.clock.seconds()
    net.advance(0.1)
    assert ran == [pytest.approx(started + 0.6)]  # it ran after the busy turn
