"""Helpers shared by the hostile-world tests: a log recorder that fails the
test on any logged failure or leaked secret (conftest's ``logs``), a name
resolver that asks no one (conftest's ``local_names``), and wire helpers:
requests byte for byte, answers split apart, and the requests that must be
refused on the wire."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.logger import LogLevel, formatEvent
from zope.interface import implementer

from txfanout.channel import MAX_HEAD_BYTES, MAX_HEADERS, MAX_LINE_BYTES

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


def request(path: bytes = b"/bid", body: bytes = b"{}", method: bytes = b"POST",
            headers: bytes = b"", close: bool = True, length: bool = True) -> bytes:
    """One HTTP/1.1 request, byte for byte (``Connection: close`` by default,
    so that the gateway ends the exchange)."""
    head = method + b" " + path + b" HTTP/1.1\r\nHost: gw\r\n" + headers
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def parse_responses(data: bytes,
                    to_head: bool = False) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split what the gateway sent into (status, headers, body) triples
    (``to_head``: answers to HEAD, without bodies)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if status < 200 or to_head else int(headers.get(b"content-length", b"0"))
        body, data = data[:length], data[length:]
        assert len(body) == length, "truncated body"
        out.append((status, headers, body))
    return out


# -- requests refused with one answer, then the connection closed --------------

REFUSED = {
    # Request smuggling: the body's length must be unambiguous.
    "content-length-and-chunked": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + request(), 400),
    "chunked-and-content-length": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n" + request(), 400),
    "two-content-lengths": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
        + request(), 400),
    "same-content-length-twice": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        400),
    "chunked-then-identity": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: identity\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400),
    "identity-coding": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity\r\n\r\n" + request(),
        400),
    "chunked-comma-list": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400),
    "signed-content-length": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nContent-Length: +2\r\n\r\n{}", 400),
    "space-before-colon": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "bad-chunk-size": (
        b"POST /bid HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n", 400),
    # Not HTTP/1.x.
    "garbage": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "http0.9": (b"GET /\r\n\r\n", 400),
    "no-header-colon": (b"POST /bid HTTP/1.1\r\nHost gw\r\n\r\n", 400),
    "bare-lf-request-line": (b"POST /bid HTTP/1.1\nHost: gw\r\n\r\n", 400),
    # NUL and bytes outside ASCII.
    "nul-in-path": (b"POST /bid\x00 HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    "high-byte-in-path": (b"POST /bid\xff HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    "nul-in-header-value": (request(headers=b"X-Country: U\x00S\r\n"), 400),
    "nul-in-header-name": (request(headers=b"X-Cou\x00ntry: US\r\n"), 400),
    "utf8-in-header-name": (request(headers=b"X-L\xc3\xa4nd: DE\r\n"), 400),
    # Header floods and long lines.
    "too-many-headers": (request(headers=b"".join(
        b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))), 431),
    "header-block-too-large": (request(headers=b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(MAX_HEAD_BYTES // 200 + 1))), 431),
    "header-line-too-long": (request(headers=b"X-Long: " + b"v" * MAX_LINE_BYTES + b"\r\n"),
                             431),
    "path-too-long": (request(path=b"/" + b"a" * MAX_LINE_BYTES), 414),
    "query-too-long": (request(path=b"/bid?" + b"q=1&" * (MAX_LINE_BYTES // 4)), 414),
    "request-line-never-ends": (b"POST /" + b"a" * (MAX_LINE_BYTES + 10), 414),
}
