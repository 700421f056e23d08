"""What the admin face takes from a client, and how it says no: a deadline
for each request, no body before authorization, a small body cap, JSON
errors, and no Server header. Byte for byte, in memory on a fake clock
(tests/fakes.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from txfanout.admin import ADMIN_MAX_BODY_BYTES, admin_site

from .configs import route_config
from .fakes import Network

TOKEN = "admin-token-0123456789abcdef"
AUTHORIZED = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


class Admin:
    def __init__(self, net: Network, port: Any) -> None:
        self.net = net
        self.address = ("127.0.0.1", port.getHost().port)

    def exchange(self, data: bytes) -> tuple[bytes, Any]:
        """Send ``data``; wait for the server to close: (head, JSON body).
        Every request here either asks for the close or is refused with one."""
        client = self.net.client(self.address, data)
        self.net.until(lambda: client.closed)
        head, _, body = client.received.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        return head, json.loads(body)


@pytest.fixture
def admin(net: Network) -> Admin:
    gw = net.gateway(route_config({"a": {"url": net.partner().url("/ok")}},
                                  admin_token=TOKEN, request_timeout_ms=200))
    return Admin(net, net.listen(admin_site(gw.gateway, reactor=net.clock)))


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header(head: bytes, name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].lower() == name.lower()]


def test_a_request_that_arrives_too_slowly_gets_408(admin, logs):
    # One header byte every 20 ms: each restarts the idle timer, none the
    # request's deadline (server.request_timeout_ms, 200 ms here).
    started = admin.net.clock.seconds()
    client = admin.net.client(admin.address, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n")
    admin.net.advance(0.02)
    assert admin.net.drip(client, b"X" * 100) > 0
    assert client.closed_at - started == pytest.approx(0.2)  # from the first byte
    received = client.received
    assert received.startswith(b"HTTP/1.1 408 ")
    assert received.endswith(b'{"error": "request not received in time"}')


def test_a_request_that_arrived_in_time_is_not_refused_later(admin, logs):
    # Its deadline ends with its arrival: the connection, kept alive, stays
    # open and quiet past request_timeout_ms.
    client = admin.net.client(admin.address,
                              b"GET /healthz HTTP/1.1\r\nHost: admin\r\n" + AUTHORIZED + b"\r\n")
    admin.net.until(lambda: client.received.endswith(b"\r\n0\r\n\r\n"))  # its last chunk
    admin.net.advance(0.5)
    assert client.received.startswith(b"HTTP/1.1 200 ") and b" 408 " not in client.received
    assert not client.closed


def test_no_body_is_read_before_authorization(admin, logs):
    # The head announces 200 MB, none of which is sent: the 401 comes anyway.
    head, body = admin.exchange(b"POST /healthz HTTP/1.1\r\nHost: admin\r\n"
                                      b"Content-Length: 209715200\r\n\r\n")
    assert status(head) == 401 and body == {"error": "admin bearer token required"}
    assert header(head, b"WWW-Authenticate") == [b'Bearer realm="txfanout-admin"']
    assert header(head, b"Connection") == [b"close"]
    head, _ = admin.exchange(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n"
                                   b"Authorization: Bearer wrong-token-0123456789\r\n\r\n")
    assert status(head) == 401


@pytest.mark.parametrize("size, code", [(ADMIN_MAX_BODY_BYTES, 405),
                                        (ADMIN_MAX_BODY_BYTES + 1, 413)])
def test_an_authorized_body_is_capped(size, code, admin, logs):
    request = b"POST /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n" + AUTHORIZED
    # Announced: over the cap, refused before a byte of it is sent.
    sent = b"x" * size if code == 405 else b""
    head, body = admin.exchange(request + b"Content-Length: %d\r\n\r\n%s" % (size, sent))
    assert status(head) == code, body
    # Chunked: refused once the bytes pass the cap.
    chunked = b"%x\r\n%s\r\n" % (size, b"x" * size)
    head, body = admin.exchange(request + b"Transfer-Encoding: chunked\r\n\r\n"
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
def test_admin_errors_are_json_and_do_not_name_the_server(request_head, code, error,
                                                                admin, logs):
    head, body = admin.exchange(request_head + AUTHORIZED + b"Connection: close\r\n\r\n")
    assert status(head) == code and body == {"error": error}
    assert header(head, b"Content-Type") == [b"application/json"]
    assert header(head, b"Server") == []
    if code == 405:
        assert set(header(head, b"Allow")[0].split(b", ")) == {b"GET", b"HEAD"}
    head, body = admin.exchange(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n"
                                      b"Connection: close\r\n" + AUTHORIZED + b"\r\n")
    assert status(head) == 200 and body["status"] == "ok"
    assert header(head, b"Server") == []
