"""The private Twisted names we lean on (txfanout/_twisted.py) are still there,
and behave as we assume: a canary for a Twisted release that moves them."""

from __future__ import annotations

import ast
import importlib
import functools
import inspect
import pathlib
import re
from typing import Any, Callable

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.tcp import Port
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import Request as ClientRequest
from twisted.web.client import HTTPConnectionPool, ResponseFailed
from twisted.web.http import HTTPChannel, Request
from twisted.web.http_headers import Headers

import txfanout
from txfanout import _twisted
from txfanout._twisted import (
    REGISTER,
    ChunkedTransferDecoder,
    HTTP11ClientProtocol,
    HTTPClientParser,
)
from txfanout.chunked import MIN_CHUNK_BYTES, CountedChunkedDecoder
from txfanout.pool import (
    GuardedParser,
    PartnerClientFactory,
    PartnerPool,
    PartnerProtocol,
    PartnerProtocolError,
)
from txfanout.upstream import BytesProducer

SRC = pathlib.Path(txfanout.__file__).parent


def _client_request(limit: int | None = None) -> ClientRequest:
    return ClientRequest(b"POST", b"/", Headers({b"Host": [b"partner"]}),
                         BytesProducer(b"{}", response_limit=limit), persistent=True)


def _requested() -> tuple[PartnerProtocol, Deferred[Any]]:
    """A partner connection with a call written on it, awaiting its answer."""
    protocol = PartnerProtocol(lambda p: None)
    protocol.makeConnection(StringTransport())
    return protocol, protocol.request(_client_request(limit=1000))


def _parser() -> HTTPClientParser:
    return _twisted.response_parser(_requested()[0])  # type: ignore[return-value]


def _channel() -> HTTPChannel:
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /x HTTP/1.1\r\n")  # the request line only
    return channel


def _decoder() -> ChunkedTransferDecoder:
    decoder = ChunkedTransferDecoder(lambda data: None, lambda rest: None)
    decoder.dataReceived(b"1\r\n")  # a chunk's size line: its length is known
    return decoder


# Instances of the classes whose registered attributes are set per instance.
INSTANCES: dict[type, Callable[[], Any]] = {
    HTTP11ClientProtocol: lambda: _requested()[0],
    HTTPClientParser: _parser,
    HTTPConnectionPool: lambda: HTTPConnectionPool(Clock()),
    ChunkedTransferDecoder: _decoder,
    HTTPChannel: _channel,
    FileDescriptor: lambda: FileDescriptor(Clock()),
}


def _resolve(dotted: str) -> tuple[Any, str]:
    """(the module or class that holds the last name, the last name)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:-1]:
            owner = getattr(owner, part)
        return owner, parts[-1]
    raise ImportError(dotted)


def _missing(entry: _twisted.Private, listening: Port) -> str | None:
    """Why ``entry`` is not on the installed Twisted, or None when it is."""
    try:
        owner, name = _resolve(entry.name)
    except (ImportError, AttributeError) as e:
        return f"{entry.name}: {e!r}"
    if entry.kind == "object" or entry.kind == "method":
        value = getattr(owner, name, None)
        if value is None or (entry.kind == "method" and not callable(value)):
            return f"{entry.name}: no such {entry.kind}"
        return None
    if hasattr(owner, name):
        return None
    instance: Any = listening if owner is Port else INSTANCES[owner]()
    return None if hasattr(instance, name) else f"{entry.name}: no such attribute"


@pytest_twisted.ensureDeferred
async def test_every_registered_name_is_on_the_installed_twisted() -> None:
    assert {e.kind for e in REGISTER} <= {"object", "method", "attribute"}
    listening = Port(0, Factory(), interface="127.0.0.1", reactor=reactor)
    listening.startListening()  # tcp.Port's numberAccepts is set from here
    try:
        missing = [why for e in REGISTER if (why := _missing(e, listening)) is not None]
    finally:
        await listening.stopListening()
    assert not missing, "private Twisted names gone or changed:\n" + "\n".join(missing)


def test_every_entry_says_why_since_when_and_what_breaks() -> None:
    for entry in REGISTER:
        assert entry.why and entry.without and re.fullmatch(r"\d+\.\d+", entry.since), entry
    names = [e.name for e in REGISTER]
    assert len(names) == len(set(names))


# -- what the rest of the package may do --

def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.name, ast.parse(p.read_text())) for p in sorted(SRC.glob("*.py"))
            if p.name != "_twisted.py"]


def test_private_twisted_objects_are_imported_only_in_the_register() -> None:
    found = []
    for filename, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twisted"):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("twisted")]
            else:
                continue
            if any(part.startswith("_") for name in names for part in name.split(".")):
                found.append(f"{filename}:{node.lineno}")
    assert not found, "import it in txfanout/_twisted.py, with an entry: " + ", ".join(found)


def _twisted_bases(cls: type) -> list[type]:
    return [b for b in cls.__mro__[1:] if b.__module__.startswith("twisted.")]


@functools.lru_cache(maxsize=None)
def _source(base: type) -> str:
    return inspect.getsource(base)


def _twisted_defines(cls: type, name: str) -> type | None:
    """The Twisted base of ``cls`` that defines ``name`` (a method, a class
    attribute, or one its code assigns to ``self``), if any."""
    assigned = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=\n]*)?=[^=]")
    for base in _twisted_bases(cls):
        if name in vars(base) or assigned.search(_source(base)):
            return base
    return None


def _our_subclasses_of_twisted() -> list[tuple[str, ast.ClassDef, type]]:
    found = []
    for filename, tree in _modules():
        module = importlib.import_module(f"txfanout.{filename[:-3]}")
        for node in ast.walk(tree):
            cls = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
            if isinstance(cls, type) and _twisted_bases(cls):
                found.append((filename, node, cls))
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_every_private_twisted_method_we_override_is_registered() -> None:
    registered = {e.name for e in REGISTER}
    unlisted = []
    for filename, node, cls in _our_subclasses_of_twisted():
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and _private(item.name):
                base = _twisted_defines(cls, item.name)
                if base is not None and f"{base.__module__}.{base.__qualname__}.{item.name}" \
                        not in registered and not _inherited_entry(base, item.name, registered):
                    unlisted.append(f"{filename}: {cls.__name__}.{item.name}")
    assert not unlisted, "overrides of private Twisted methods missing from the register: " \
        + ", ".join(unlisted)


def _inherited_entry(base: type, name: str, registered: set[str]) -> bool:
    """Whether ``name`` is registered on a Twisted class ``base`` inherits it from."""
    return any(f"{b.__module__}.{b.__qualname__}.{name}" in registered for b in base.__mro__)


def test_our_subclasses_reach_twisted_privates_only_through_the_register() -> None:
    found = []
    for filename, node, cls in _our_subclasses_of_twisted():
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self" and _private(sub.attr)
                    and _twisted_defines(cls, sub.attr) is not None):
                found.append(f"{filename}:{sub.lineno} self.{sub.attr}")
    assert not found, "use (or add) a function in txfanout/_twisted.py: " + ", ".join(found)


# -- the behaviour we assume, where it is cheap to check --

def test_request_builds_the_parser_that_the_guard_takes_over() -> None:
    protocol, _ = _requested()
    parser = _twisted.response_parser(protocol)
    assert type(parser) is GuardedParser and parser.body_limit == 1000


def _answer(data: bytes) -> Failure:
    protocol, d = _requested()
    failures: list[Failure] = []
    d.addErrback(failures.append)
    protocol.dataReceived(data)
    [failure] = failures
    return failure


def test_a_body_framed_both_ways_fails_the_call() -> None:
    failure = _answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
    failure.trap(ResponseFailed)
    assert failure.value.reasons[0].check(PartnerProtocolError)


def test_a_head_over_the_bound_fails_the_call() -> None:
    failure = _answer(b"HTTP/1.1 200 OK\r\n"
                      + b"".join(b"X-%d: %s\r\n" % (i, b"x" * 100) for i in range(200)))
    failure.trap(ResponseFailed)
    assert failure.value.reasons[0].check(PartnerProtocolError)


def test_bytes_past_the_answer_keep_the_connection_out_of_the_pool() -> None:
    pooled: list[Any] = []
    protocol = PartnerProtocol(pooled.append)
    protocol.makeConnection(StringTransport())
    answers: list[Any] = []
    protocol.request(_client_request()).addCallback(answers.append)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert [a.code for a in answers] == [200]
    assert pooled == [] and protocol.transport.disconnecting  # type: ignore[union-attr]


def test_the_pool_builds_connections_with_its_factory_and_keeps_them_as_twisted_does() -> None:
    clock = Clock()
    pool = PartnerPool(clock)
    factories: list[Any] = []

    class Endpoint:
        def connect(self, factory: Any) -> Deferred[Any]:
            factories.append(factory)
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            return succeed(protocol)

    key = (b"http", b"partner", 80)
    built: list[Any] = []
    pool.getConnection(key, Endpoint()).addCallback(built.append)
    [factory], [connection] = factories, built
    assert type(factory) is PartnerClientFactory and type(connection) is PartnerProtocol
    connection._quiescentCallback(connection)  # as Twisted does when an answer ends
    assert pool.idle_connections() == {key: [connection]}
    reused: list[Any] = []
    HTTPConnectionPool.getConnection(pool, key, Endpoint()).addCallback(reused.append)
    assert reused == [connection] and pool.idle_connections() == {key: []}
    assert clock.getDelayedCalls() == []  # its expiry went with it
    connection._quiescentCallback(connection)
    clock.advance(pool.cachedConnectionTimeout)
    assert pool.idle_connections() == {key: []} and connection.transport.disconnecting


class _Channel(HTTPChannel):
    maxHeaders = 2
    totalHeadersSize = 100

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.seen.append(("refused", _twisted.header_count(self), _twisted.header_bytes(self)))
        super()._respondToBadRequestAndDisconnect()

    def _send100Continue(self) -> None:
        self.seen.append(("continue", _twisted.request_path(self)))


def _fed(data: bytes) -> _Channel:
    channel = _Channel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(data)
    return channel


def test_a_refused_request_goes_through_the_one_method_with_its_counts() -> None:
    [(what, count, size)] = _fed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").seen
    assert what == "refused" and count > _Channel.maxHeaders and size <= _Channel.totalHeadersSize
    [(what, count, size)] = _fed(b"GET / HTTP/1.1\r\nA: " + b"x" * 100 + b"\r\n\r\n").seen
    assert what == "refused" and count <= _Channel.maxHeaders and size > _Channel.totalHeadersSize


def test_expect_100_continue_goes_through_the_one_method_and_the_body_decoder_is_settable(
        ) -> None:
    channel = _fed(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
    assert channel.seen == [("continue", b"/x")]
    decoder = _twisted.transfer_decoder(channel)
    assert type(decoder) is ChunkedTransferDecoder
    counted = CountedChunkedDecoder.replacing(decoder, 10_000)
    _twisted.set_transfer_decoder(channel, counted)
    channel.dataReceived(b"5\r\nhello\r\n")
    assert counted.counted == MIN_CHUNK_BYTES


def test_a_whole_request_is_being_handled_until_it_is_answered() -> None:
    channel = _fed(b"GET /x HTTP/1.1\r\n")
    assert not _twisted.handling_request(channel)
    channel.dataReceived(b"Host: x\r\n\r\n")
    assert _twisted.handling_request(channel)
    [request] = channel.requests
    request.finish()
    assert not _twisted.handling_request(channel) and not _twisted.client_gone(request)


def test_a_client_gone_is_known_to_its_request() -> None:
    channel = _fed(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    [request] = channel.requests
    channel.connectionLost(Failure(ConnectionError()))
    assert isinstance(request, Request) and _twisted.client_gone(request)


def test_endpoint_strings_split_as_the_admin_check_reads_them() -> None:
    assert _twisted.parse_endpoint("tcp:9090:interface=127.0.0.1") == (
        ["tcp", "9090"], {"interface": "127.0.0.1"})
    assert _twisted.parse_endpoint("tcp6:port=9090:interface=\\:\\:1") == (
        ["tcp6"], {"port": "9090", "interface": "::1"})
