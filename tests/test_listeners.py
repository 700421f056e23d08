"""Endpoint strings for several processes: per-worker admin ports, the
socket a ``--workers`` parent binds, and the one a worker adopts."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from txfanout.listeners import (
    EndpointError,
    Listener,
    bind_listening_socket,
    inherited_endpoint,
    share_fairly,
    shift_port,
)

from .loopback import raw_client, within


@pytest.mark.parametrize("description, offset, expected", [
    ("tcp:9090:interface=127.0.0.1", 2, "tcp:9092:interface=127.0.0.1"),
    ("tcp:port=9090:interface=127.0.0.1", 1, "tcp:port=9091:interface=127.0.0.1"),
    ("tcp:interface=127.0.0.1:port=9090", 1, "tcp:interface=127.0.0.1:port=9091"),
    (r"tcp6:9090:interface=\:\:1", 3, r"tcp6:9093:interface=\:\:1"),
    ("ssl:9443:privateKey=k.pem", 1, "ssl:9444:privateKey=k.pem"),
    ("unix:/run/txfanout/admin.sock", 2, "unix:/run/txfanout/admin.sock-2"),
    ("tcp:0:interface=127.0.0.1", 5, "tcp:0:interface=127.0.0.1"),
    ("systemd:domain=INET:name=admin", 0, "systemd:domain=INET:name=admin"),
])
def test_shift_port(description: str, offset: int, expected: str) -> None:
    assert shift_port(description, offset) == expected


@pytest.mark.parametrize("description, offset, message", [
    ("systemd:domain=INET:name=admin", 1, "cannot derive a per-worker endpoint"),
    ("tcp:65535", 1, "past port 65535"),
    ("tcp:interface=127.0.0.1", 1, "has no port"),
    ("tcp:http", 1, "no numeric port"),
])
def test_shift_port_refuses(description: str, offset: int, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        shift_port(description, offset)


def test_bind_listening_socket_tcp() -> None:
    sock = bind_listening_socket(reactor, "tcp:0:interface=127.0.0.1:backlog=7")
    try:
        assert sock.family == socket.AF_INET
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        socket.create_connection((host, port), timeout=5).close()  # it listens
    finally:
        sock.close()


def test_bind_listening_socket_refuses() -> None:
    with pytest.raises(EndpointError, match="needs a tcp:, tcp6: or systemd: listen endpoint"):
        bind_listening_socket(reactor, "unix:/tmp/x.sock")
    with pytest.raises(EndpointError, match="give tcp:PORT"):
        bind_listening_socket(reactor, "tcp:8080:reuse=1")
    taken = bind_listening_socket(reactor, "tcp:0:interface=127.0.0.1")
    try:
        port = taken.getsockname()[1]
        with pytest.raises(EndpointError, match=f"cannot listen on tcp:{port}.*in use"):
            bind_listening_socket(reactor, f"tcp:{port}:interface=127.0.0.1")
    finally:
        taken.close()


@pytest_twisted.ensureDeferred
async def test_an_inherited_socket_is_served_and_stops_alone():
    class Hello(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"hello")
            self.transport.loseConnection()

    sock = bind_listening_socket(reactor, "tcp:0:interface=127.0.0.1")
    address = sock.getsockname()
    listener = Listener("public", inherited_endpoint(reactor, sock.detach()),
                        Factory.forProtocol(Hello))
    listener.startService()
    await within(listener.ready)
    assert await within(raw_client(address, b"").closed) == b"hello"
    first, second = listener.stop_accepting(), listener.stopService()
    await within(first)
    await within(second)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


@pytest_twisted.inlineCallbacks
def test_a_shared_socket_takes_one_connection_per_wake_up():
    """Three clients wait in the backlog: a port shared with other processes
    takes one of them each time it wakes up, not all three at once (the
    other processes, woken too, take the rest)."""
    accepted: list[Protocol] = []

    class Accepted(Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

    port = share_fairly(reactor.listenTCP(0, Factory.forProtocol(Accepted),
                                          interface="127.0.0.1"))
    address = port.getHost()
    clients = [socket.create_connection((address.host, address.port), timeout=5)
               for _ in range(3)]
    try:
        for taken in (1, 2, 3):
            port.doRead()  # what the reactor calls when the socket is readable
            assert len(accepted) == taken
    finally:
        for protocol in accepted:
            protocol.transport.abortConnection()
        for client in clients:
            client.close()
        yield port.stopListening()
