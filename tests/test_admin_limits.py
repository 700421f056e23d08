"""How the admin face says no (real sockets): JSON errors, and no Server
header."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor

from txfanout.admin import admin_site

from .conftest import raw_client, route_config, within
from .hostile import logs  # noqa: F401 - fixture

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
    gw = make_gateway(route_config({"a": {"url": partner.url("/ok")}}, admin_token=TOKEN))
    port = reactor.listenTCP(0, admin_site(gw.gateway), interface="127.0.0.1")
    yield Admin(port)
    await port.stopListening()


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header(head: bytes, name: bytes) -> list[bytes]:
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].lower() == name.lower()]


@pytest.mark.parametrize("request_head, code, error", [
    (b"GET /nothing-here HTTP/1.1\r\nHost: admin\r\n", 404,
     "no such admin page (GET / lists them)"),
    (b"DELETE /healthz HTTP/1.1\r\nHost: admin\r\n", 405, "method not allowed: use GET"),
    (b"GET /%ff HTTP/1.1\r\nHost: admin\r\n", 400, "path and Host must be UTF-8"),
    (b"GET /healthz HTTP/1.1\r\nHost: \xff\r\n", 400, "path and Host must be UTF-8"),
], ids=["404", "405", "path", "host"])
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
