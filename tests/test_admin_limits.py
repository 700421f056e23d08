"""What the admin face takes from a client, and how it says no (real sockets):
a deadline for each request, no body before authorization, a small body cap,
JSON errors, and no Server header."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from txfanout.admin import ADMIN_MAX_BODY_BYTES, admin_site

from .configs import route_config
from .loopback import raw_client, within

TOKEN = "admin-token-0123456789abcdef"
AUTHORIZED = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


class Admin:
    def __init__(self, port: Any) -> None:
        self.port = port
        self.address = ("127.0.0.1", port.getHost().port)

    async def exchange(self, data: bytes) -> tuple[bytes, Any]:
        """Send ``data``; wait for the server to close: (head, JSON body).
        Every request here either asks for the close or is refused with one."""
        received = await within(raw_client(self.address, data).closed)
        head, _, body = received.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        return head, json.loads(body)


@pytest_twisted.async_yield_fixture
async def admin(make_gateway, partner) -> AsyncIterator[Admin]:
    gw = make_gateway(route_config({"a": {"url": partner.url("/ok")}},
                                   admin_token=TOKEN, request_timeout_ms=200))
    port = reactor.listenTCP(0, admin_site(gw.gateway), interface="127.0.0.1")
    yield Admin(port)
    await port.stopListening()


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header(head: bytes, name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].lower() == name.lower()]


@pytest_twisted.ensureDeferred
async def test_a_request_that_arrives_too_slowly_gets_408(admin, logs):
    # One header byte every 20 ms: each restarts the idle timer, none the
    # request's deadline (server.request_timeout_ms, 200 ms here).
    client = raw_client(admin.address, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")
    drip = LoopingCall(lambda: client.transport.write(b"X"))
    drip.start(0.02, now=False)
    try:
        received = await within(client.closed)
    finally:
        drip.stop()
    assert received.startswith(b"HTTP/1.1 408 ")
    assert received.endswith(b'{"error": "request not received in time"}')


@pytest_twisted.ensureDeferred
async def test_no_body_is_read_before_authorization(admin, logs):
    # The head announces 200 MB, none of which is sent: the 401 comes anyway.
    head, body = await admin.exchange(b"POST /healthz HTTP/1.1\r\nHost: admin\r\n"
                                      b"Content-Length: 209715200\r\n\r\n")
    assert status(head) == 401 and body == {"error": "admin bearer token required"}
    assert header(head, b"WWW-Authenticate") == [b'Bearer realm="txfanout-admin"']
    assert header(head, b"Connection") == [b"close"]
    head, _ = await admin.exchange(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n"
                                   b"Authorization: Bearer wrong-token-0123456789\r\n\r\n")
    assert status(head) == 401


@pytest.mark.parametrize("size, code", [(ADMIN_MAX_BODY_BYTES, 405),
                                        (ADMIN_MAX_BODY_BYTES + 1, 413)])
@pytest_twisted.ensureDeferred
async def test_an_authorized_body_is_capped(size, code, admin, logs):
    request = b"POST /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n" + AUTHORIZED
    # Announced: over the cap, refused before a byte of it is sent.
    sent = b"x" * size if code == 405 else b""
    head, body = await admin.exchange(request + b"Content-Length: %d\r\n\r\n%s" % (size, sent))
    assert status(head) == code, body
    # Chunked: refused once the bytes pass the cap.
    chunked = b"%x\r\n%s\r\n" % (size, b"x" * size)
    head, body = await admin.exchange(request + b"Transfer-Encoding: chunked\r\n\r\n"
                                      + chunked + (b"0\r\n\r\n" if code == 405 else b""))
    assert status(head) == code, body
    if code == 413:
        assert body == {"error": f"admin requests take no body over {ADMIN_MAX_BODY_BYTES} bytes"}


@pytest.mark.parametrize("request_head, code, error", [
    (b"GET /nothing-here HTTP/1.1\r\nHost: admin\r\n", 404,
     "no such admin page (GET / lists them)"),
    (b"DELETE /healthz HTTP/1.1\r\nHost: admin\r\n", 405, "method not allowed: use GET"),
    (b"GET /%ff HTTP/1.1\r\nHost: admin\r\n", 400, "path and Host must be UTF-8"),
    (b"GET /healthz HTTP/1.1\r\nHost: \xff\r\n", 400, "path and Host must be UTF-8"),
    (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: admin\r\n", 414,
     "request line over 8192 bytes"),
    (b"GET /healthz HTTP/1.1\r\nHost: admin\r\n" + b"X-A: b\r\n" * 101, 431,
     "more than 100 request headers"),
], ids=["404", "405", "path", "host", "414", "431"])
@pytest_twisted.ensureDeferred
async def test_admin_errors_are_json_and_do_not_name_the_server(request_head, code, error,
                                                                admin, logs):
    head, body = await admin.exchange(request_head + AUTHORIZED + b"Connection: close\r\n\r\n")
    assert status(head) == code and body == {"error": error}
    assert header(head, b"Content-Type") == [b"application/json"]
    assert header(head, b"Server") == []
    if code == 405:
        assert set(header(head, b"Allow")[0].split(b", ")) == {b"GET", b"HEAD"}
    head, body = await admin.exchange(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n"
                                      b"Connection: close\r\n" + AUTHORIZED + b"\r\n")
    assert status(head) == 200 and body["status"] == "ok"
    assert header(head, b"Server") == []
