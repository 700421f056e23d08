"""Helpers shared by the hostile-world tests: a log recorder that fails the
test on any logged failure or leaked secret, raw-partner fixture, a name
resolver that asks no one, and a few wire helpers."""

from __future__ import annotations

import gc
import ipaddress
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from .rawpartners import RawPartner

SECRET = "s3cr3t-partner-key-do-not-leak-0123456789"
"""A partner header value that must never be seen outside the partner call."""


def event_text(event: dict[str, Any]) -> str:
    """An event as text: message, every field, and any traceback."""
    parts = [formatEvent(event)]
    parts.extend(repr(v) for k, v in event.items() if k != "log_logger")
    failure = event.get("log_failure")
    if failure is not None:
        parts.append(failure.getTraceback())
    return "\n".join(parts)


class LogRecorder:
    """Watches every log event; keeps only those that are failures (a
    traceback) or errors, and those that mention :data:`SECRET`."""

    def __init__(self) -> None:
        self.seen = 0
        self.failures: list[str] = []
        self.secrets: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.seen += 1
        text = event_text(event)
        if SECRET in text:
            self.secrets.append(text)
        if event.get("log_failure") is not None or event.get("isError") \
                or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.failures.append(text)


@pytest.fixture
def logs() -> Any:
    """Records log events; the test fails if any is a failure (traceback) or
    mentions :data:`SECRET`."""
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


@pytest_twisted.async_yield_fixture
async def raw_partner() -> AsyncIterator[RawPartner]:
    server = RawPartner().start()
    yield server
    await server.stop()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class LocalNames:
    """A name resolver that asks no one (tests send nothing off the machine):
    IP literals resolve to themselves (the test's own clients connect to
    127.0.0.1 through it), names in ``known`` (lower case) to their IPv4
    address, and any other name fails at once. ``asked`` lists the names
    looked up, as given."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}
        self.asked: list[str] = []

    def resolveHostName(self, receiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> _Resolution:
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        try:
            ip = ipaddress.ip_address(hostName)
        except ValueError:
            self.asked.append(hostName)
            known = self.known.get(hostName.lower())
            if known is not None:
                receiver.addressResolved(IPv4Address("TCP", known, portNumber))
        else:
            address = IPv4Address if ip.version == 4 else IPv6Address
            receiver.addressResolved(address("TCP", hostName, portNumber))
        receiver.resolutionComplete()
        return resolution


@pytest.fixture
def local_names() -> Iterator[LocalNames]:
    """The reactor resolves names with a :class:`LocalNames` for one test."""
    resolver = LocalNames()
    previous = reactor.installNameResolver(resolver)
    yield resolver
    reactor.installNameResolver(previous)


async def until(condition: Any, timeout: float = 2.0, step: float = 0.005) -> None:
    """Let the reactor run until ``condition()`` holds (a bounded poll, for
    state that has no event to wait on)."""
    for _ in range(int(timeout / step)):
        if condition():
            return
        await deferLater(reactor, step, lambda: None)
    assert condition(), "condition not reached in time"
