"""Fixtures shared by the test modules (helpers live in the support modules:
fakes, loopback, partners, rawpartners, hostile, daemon, certs, configs,
leakcheck)."""

from __future__ import annotations

import gc
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from .certs import KeyPair, TestPKI
from .daemon import ThreadedPartner
from .fakes import Network
from .hostile import LocalNames, LogRecorder
from txfanout.memory import freeze_startup

from .loopback import GatewayUnderTest
from .partners import PartnerServer, TLSPartner
from .rawpartners import RawPartner


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a ``runtime_neutral`` test that is not ``slow``: .ci/run's
    PyPy run leaves the former out, and the fast tier runs whole on both
    runtimes."""
    stray = [item.nodeid for item in items
             if item.get_closest_marker("runtime_neutral") and not item.get_closest_marker("slow")]
    if stray:
        raise pytest.UsageError("runtime_neutral but not slow: " + ", ".join(stray))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (every module, Twisted, hypothesis, the tests'
    tables) lives as long as the run: freeze it out of the collector's way,
    as the daemon does with what start-up built (memory.freeze_startup).
    Each full collection (``logs`` makes two per test) then walks only what
    the tests made since: about 35 ms less each. (PyPy's collector has no
    generations to freeze.)"""
    freeze_startup()


@pytest.fixture(autouse=True)
def no_logged_errors() -> Iterator[list[dict[str, Any]]]:
    """Fail any test during which something logged an error or a traceback;
    a test that expects some takes them out of the list it is given."""
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event or event.get("log_level") in (LogLevel.error,
                                                                LogLevel.critical):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    yield errors
    globalLogPublisher.removeObserver(observe)
    assert [formatEvent(e) + str(e.get("log_failure", "")) for e in errors] == []


@pytest.fixture
def logs() -> Any:
    """Records log events; the test fails if any is a failure (traceback) or
    mentions :data:`hostile.SECRET`."""
    gc.collect()  # what earlier tests left to be collected is not this test's
    recorder = LogRecorder()
    globalLogPublisher.addObserver(recorder)
    try:
        yield recorder
        gc.collect()  # unhandled errors in Deferreds are logged when collected
    finally:
        globalLogPublisher.removeObserver(recorder)
    assert recorder.failures == []
    assert recorder.secrets == []


@pytest.fixture
def local_names() -> Iterator[LocalNames]:
    """The reactor resolves names with a :class:`hostile.LocalNames` for one test."""
    resolver = LocalNames()
    previous = reactor.installNameResolver(resolver)
    yield resolver
    reactor.installNameResolver(previous)


@pytest.fixture
def net() -> Iterator[Network]:
    """A fake reactor and in-memory connections (fakes.Network): for
    gateways, partners and clients that run in fake time."""
    network = Network()
    yield network
    network.close()


@pytest_twisted.async_yield_fixture
async def partner() -> AsyncIterator[PartnerServer]:
    """A loopback partner (partners.PartnerServer)."""
    server = PartnerServer().start()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def raw_partner() -> AsyncIterator[RawPartner]:
    """A loopback partner that misbehaves byte for byte (rawpartners.RawPartner)."""
    server = RawPartner().start()
    yield server
    await server.stop()


@pytest.fixture
def threaded_partner() -> Iterator[ThreadedPartner]:
    """A partner served by threads, for tests that block on a daemon."""
    p = ThreadedPartner()
    yield p
    p.close()


@pytest_twisted.async_yield_fixture
async def make_gateway() -> AsyncIterator[Callable[[dict[str, Any]], GatewayUnderTest]]:
    """Start gateways on loopback ports (``make_gateway(raw_config)``),
    stopped after the test."""
    started: list[GatewayUnderTest] = []

    def make(raw_config: dict[str, Any]) -> GatewayUnderTest:
        g = GatewayUnderTest(raw_config)
        started.append(g)
        return g

    yield make
    for g in started:
        await g.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A throw-away CA and its certificates (certs.TestPKI)."""
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest_twisted.async_yield_fixture
async def tls_partner() -> AsyncIterator[Callable[..., TLSPartner]]:
    """Start loopback TLS partners (``tls_partner(pair, client_ca=None)``)."""
    started: list[TLSPartner] = []

    def start(pair: KeyPair, client_ca: Any = None, **extra: Any) -> TLSPartner:
        server = TLSPartner(pair, client_ca, **extra).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()
