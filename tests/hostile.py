"""Helpers shared by the hostile-world tests: a log recorder that fails the
test on any logged failure or leaked secret, raw-partner fixture, and a few
wire helpers."""

from __future__ import annotations

import gc
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

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


async def until(condition: Any, timeout: float = 2.0, step: float = 0.005) -> None:
    """Let the reactor run until ``condition()`` holds (a bounded poll, for
    state that has no event to wait on)."""
    for _ in range(int(timeout / step)):
        if condition():
            return
        await deferLater(reactor, step, lambda: None)
    assert condition(), "condition not reached in time"
