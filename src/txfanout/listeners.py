"""Where the daemon listens: endpoint strings, inherited sockets, listeners
that say when they are up and can stop accepting on their own."""

from __future__ import annotations

import re
import socket
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import _twisted

log = Logger()

_SEPARATOR = re.compile(r"(?<!\\):")
_PORTED = ("tcp", "tcp6", "ssl")


class EndpointError(ValueError):
    """An endpoint string this feature cannot use; the message says why."""


def _split(description: str) -> tuple[str, list[str]]:
    parts = _SEPARATOR.split(description)
    return parts[0], parts[1:]


def shift_port(description: str, offset: int) -> str:
    """``description`` with its port number raised by ``offset`` (a unix
    socket path gets ``-OFFSET`` appended): worker I's admin face listens at
    the configured admin port + I. Port 0 (any free port) stays 0."""
    if offset == 0:
        return description
    kind, args = _split(description)
    if kind in _PORTED:
        key = "port"
    elif kind == "unix":
        key = "address"
    else:
        raise EndpointError(f"cannot derive a per-worker endpoint from {kind!r} "
                            "(use tcp:, tcp6:, ssl: or unix:)")
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if equals and name != key:
            continue
        value = value if equals else arg
        if kind == "unix":
            shifted = f"{value}-{offset}"
        else:
            if not value.isdigit():
                raise EndpointError(f"{description!r} has no numeric port")
            shifted = str(int(value) + offset) if int(value) else "0"
            if int(shifted) > 65535:
                raise EndpointError(f"{description!r} + {offset} is past port 65535")
        args[i] = f"{key}={shifted}" if equals else shifted
        return ":".join([kind, *args])
    raise EndpointError(f"{description!r} has no {key}")


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """``serverFromString``, with a clear error for what cannot be used
    (e.g. a ``systemd:`` socket that systemd did not pass)."""
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
        return endpoint
    except KeyError as e:
        raise EndpointError(f"{description}: no inherited socket named {e} "
                            "(LISTEN_FDNAMES; is the .socket unit running?)") from None
    except IndexError:
        raise EndpointError(f"{description}: no inherited socket at that index") from None
    except (ValueError, TypeError) as e:
        raise EndpointError(f"{description}: {e}") from None


def bind_listening_socket(reactor: Any, description: str) -> socket.socket:
    """A listening socket for ``description``, for worker processes to adopt:
    ``tcp:``/``tcp6:`` are bound here (SO_REUSEADDR, backlog as given, default
    50 like Twisted); ``systemd:`` is the socket systemd passed us."""
    kind, args = _split(description)
    if kind == "systemd":
        endpoint = server_endpoint(reactor, description)
        if not isinstance(endpoint, AdoptedStreamServerEndpoint):  # pragma: no cover
            raise EndpointError(f"{description!r} is not an inherited socket")
        return socket.socket(fileno=endpoint.fileno)
    if kind not in ("tcp", "tcp6"):
        raise EndpointError(f"--workers needs a tcp:, tcp6: or systemd: listen endpoint, "
                            f"not {kind!r}")
    family = socket.AF_INET if kind == "tcp" else socket.AF_INET6
    options = {"interface": "" if kind == "tcp" else "::", "backlog": "50"}
    positional = ["port", "backlog", "interface"]
    for arg in args:
        name, equals, value = arg.partition("=")
        if equals:
            options[name] = value
        elif positional:
            options[positional.pop(0)] = arg
    unknown = set(options) - {"port", "interface", "backlog"}
    if unknown or not options.get("port", "").isdigit() or not options["backlog"].isdigit():
        raise EndpointError(f"cannot bind {description!r}: give tcp:PORT[:interface=ADDR]"
                            "[:backlog=N]")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options["interface"].replace("\\:", ":"), int(options["port"])))
        sock.listen(int(options["backlog"]))
    except OSError as e:
        sock.close()
        raise EndpointError(f"cannot listen on {description}: {e.strerror or e}; choose "
                            "another with --listen (or server.listen)") from None
    return sock


def inherited_endpoint(reactor: Any, fd: int) -> IStreamServerEndpoint:
    """An endpoint adopting the listening socket at ``fd`` (given by a
    ``--workers`` parent), whatever its address family."""
    probe = socket.socket(fileno=fd)
    try:
        if probe.type != socket.SOCK_STREAM:
            raise EndpointError(f"fd {fd} is not a stream socket")
        family = probe.family
    finally:
        probe.detach()
    return AdoptedStreamServerEndpoint(reactor, fd, family)


def share_fairly(port: IListeningPort) -> IListeningPort:
    """Make ``port``, a listening socket other processes accept on too
    (``--workers``, or instances of one socket unit), take one connection
    per wake-up. Every process is woken for a new connection; Twisted's
    accept loop would let the first take all that wait (up to a hundred),
    so a client opening its 64 keep-alive connections at once could give
    them all to one worker. One at a time, a busy process comes back to
    accept later than an idle one, and the idle one takes more."""
    _twisted.accept_one_per_wake(port)
    return port


def cannot_listen(description: str, what: str, reason: object, option: str) -> str:
    """The one line the daemon exits with when it cannot listen, e.g.
    ``txfanout: cannot listen on tcp:8080 (public): Address already in use;
    choose another with --listen``."""
    error = getattr(reason, "socketError", None) or reason
    text = getattr(error, "strerror", None) or str(error)
    hint = f"; choose another with {option}" if option else ""
    return f"txfanout: cannot listen on {description} ({what}): {text}{hint}"


def _stop(port: IListeningPort) -> Deferred[None]:
    stopped = port.stopListening()
    return stopped if stopped is not None else succeed(None)


class Listener(service.Service):
    """Listens with ``factory`` on ``endpoint`` while running.

    ``ready`` fires with the port once listening; ``stop_accepting`` closes
    the port (connections already accepted stay open). A failure to listen
    when the daemon starts stops it with one line that names the endpoint
    (``description``) and the option that moves it (``option``).
    """

    def __init__(self, name: str, endpoint: IStreamServerEndpoint, factory: Any,
                 description: str = "", option: str = "") -> None:
        self.name = self.what = name
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.option = option
        self.port: IListeningPort | None = None
        self.ready: Deferred[IListeningPort] = Deferred()
        self._closing: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        failed: list[Failure] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failed.append)
        if failed:  # at start-up: twistd exits 1 with this one line
            raise SystemExit(cannot_listen(self.description or self.what, self.what,
                                           failed[0].value, self.option))

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.ready.callback(port)

    def stop_accepting(self) -> Deferred[None]:
        """Close the listening port; fires when it is closed (every caller
        gets its own Deferred)."""
        if self._closing is None:
            self._closing = maybeDeferred(_stop, self.port) if self.port else succeed(None)
        done: Deferred[None] = Deferred()

        def closed(result: Any) -> Any:
            done.callback(None)
            return result

        self._closing.addBoth(closed)
        return done

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop_accepting()
