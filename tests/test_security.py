"""Nobody let in: partners come from the configuration only, their secrets
stay in the partner call, the admin face is loopback or token-protected, and
errors tell clients nothing about the inside."""

from __future__ import annotations

import dataclasses
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.python.usage import UsageError

from txfanout import tap
from txfanout.admin import Admin, admin_site
from txfanout.adminauth import bearer_matches, listens_on_loopback
from txfanout.config import ConfigError, ServerConfig, parse

from .configs import route_config
from .hostile import SECRET, LogRecorder, parse_responses, request
from .loopback import raw_client, within
from .partners import refused_url

TOKEN = "admin-token-0123456789abcdef"

# Every text a call's "error" may carry: a closed vocabulary, no exception
# text, no URL, no path.
FIXED_ERRORS = {
    "connection refused", "connection reset", "connection closed",
    "connection closed before any answer", "connection closed before the answer was complete",
    "request could not be sent", "DNS lookup failed", "connect timed out", "connect failed",
    "malformed HTTP response", "response headers over 16384 bytes", "TLS handshake failed",
    "error", "cancelled", "no time left in the deadline", "partner at max_concurrency",
    "circuit open after repeated failures",
}


@pytest_twisted.ensureDeferred
async def test_nothing_in_a_request_changes_where_or_how_a_partner_is_called(
        partner, make_gateway, logs):
    gw = make_gateway(route_config({"echo": {"url": partner.url("/echo?k=v"),
                                             "headers": {"X-Api-Key": SECRET}}}))
    hostile = (b"X-Forwarded-Host: evil.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
               b"Forwarded: host=evil.example;proto=https\r\nX-Original-URL: http://evil/\r\n"
               b"X-Rewrite-URL: /admin\r\nX-Api-Key: attacker\r\nContent-Type: text/evil\r\n"
               b"Authorization: Bearer stolen\r\nCookie: a=b\r\nX-Evil: 1\r\n"
               b"Proxy-Connection: keep-alive\r\nX-Fanout-Partner: http://evil/\r\n")
    data = request(path=b"/bid?url=http://evil.example/&partner=http://evil/",
                   body=b'{"url": "http://evil.example/", "partners": ["http://evil/"]}',
                   headers=hostile).replace(b"Host: gw", b"Host: evil.example")
    [(status, _, body)] = parse_responses(await within(raw_client(gw.address, data).closed))
    assert status == 200
    [result] = json.loads(body)["results"]
    seen = json.loads(result["body"])
    assert seen["uri"] == "/echo?k=v" and seen["method"] == "POST"
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers["host"] == [f"127.0.0.1:{partner.port.getHost().port}"]
    assert headers["x-api-key"] == [SECRET]
    assert headers["content-type"] == ["application/json"]
    assert set(headers) <= {"host", "content-type", "content-length", "connection",
                            "x-api-key", "x-fanout-deadline-ms", "x-request-id"}
    assert partner.seen == 1
    # An absolute URI in the request line names no partner either.
    data = request(path=b"http://127.0.0.1:%d/echo" % partner.port.getHost().port)
    [(status, _, _)] = parse_responses(await within(raw_client(gw.address, data).closed))
    assert status == 404 and partner.seen == 1


@pytest_twisted.ensureDeferred
async def test_call_errors_are_a_fixed_vocabulary_without_secrets_or_addresses(
        partner, raw_partner, make_gateway, logs, local_names):
    secret = {"headers": {"X-Api-Key": SECRET, "Authorization": "Bearer " + SECRET}}
    refused = refused_url()
    gw = make_gateway(route_config({
        "refused": {"url": refused, **secret},
        "dns": {"url": "http://partner.invalid/bid", **secret},
        "reset": {"url": partner.url("/reset"), **secret},
        "malformed": {"url": raw_partner.url("/garbage-status"), **secret},
        "headers": {"url": raw_partner.url("/huge-headers"), **secret},
        "midbody": {"url": raw_partner.url("/close-mid-body"), **secret},
        "timeout": {"url": raw_partner.url("/silent"), "timeout_ms": 50, **secret},
        "fails": {"url": partner.url("/status/503"), **secret},
    }, deadline_ms=2000))
    answer = await gw.post()
    assert answer.code == 200
    text = answer.body.decode()
    for needle in (SECRET, "127.0.0.1", "partner.invalid", refused, "Traceback", ".py"):
        assert needle not in text
    assert local_names.asked == ["partner.invalid"]  # in process: no DNS query sent
    for result in answer.json["results"]:
        assert result.get("error") is None or result["error"] in FIXED_ERRORS \
            or result["error"].startswith(("no answer in ", "body over ")), result
    assert SECRET not in repr(gw.config)


@pytest_twisted.ensureDeferred
async def test_an_internal_error_says_nothing_about_the_inside(partner, make_gateway,
                                                              no_logged_errors, monkeypatch):
    from twisted.logger import globalLogPublisher

    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))

    def broken(*args):
        raise RuntimeError("boom in /srv/txfanout/secret.py")

    recorder = LogRecorder()
    globalLogPublisher.addObserver(recorder)
    try:
        monkeypatch.setattr("txfanout.gateway.parse", broken)
        received = await within(raw_client(gw.address, request(close=False)).closed)
    finally:
        globalLogPublisher.removeObserver(recorder)
        monkeypatch.undo()
    [(status, headers, body)] = parse_responses(received)
    assert status == 500 and json.loads(body) == {"error": "internal error"}
    assert headers[b"connection"] == b"close"
    [logged] = recorder.failures  # the operator gets the traceback
    assert "boom" in logged and "Traceback" in logged
    assert len(no_logged_errors) == 1
    no_logged_errors.clear()  # expected: it is what this test provokes
    assert gw.gateway.admission.admitted == 0
    assert (await gw.post()).code == 200


# -- the admin face -----------------------------------------------------------

@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp:9090:interface=127.0.0.1", True),
    ("tcp:9090:interface=127.0.0.53", True),
    (r"tcp6:9090:interface=\:\:1", True),
    ("tcp:9090:127.0.0.1", True),
    ("tcp:9090:interface=localhost", True),
    ("unix:/run/txfanout/admin.sock", True),
    ("tcp:9090", False),
    ("tcp:9090:interface=0.0.0.0", False),
    (r"tcp6:9090:interface=\:\:", False),
    ("tcp:9090:interface=192.0.2.10", False),
    ("tcp:9090:interface=admin.example", False),
    ("systemd:domain=INET:name=admin", False),
    ("ssl:9443:privateKey=k.pem:interface=127.0.0.1", True),
    ("ssl:9443:privateKey=k.pem", False),
])
def test_which_admin_endpoints_are_loopback(endpoint, loopback):
    assert listens_on_loopback(endpoint) is loopback


def config_with(**server):
    return {"server": server, "partners": {"a": {"url": "http://127.0.0.1:1/"}},
            "routes": {"bid": {"partners": ["a"]}}}


def test_admin_beyond_loopback_needs_a_token():
    assert listens_on_loopback(ServerConfig().admin)  # the default
    with pytest.raises(ConfigError) as caught:
        parse(config_with(admin="tcp:9090:interface=0.0.0.0"))
    assert caught.value.errors == ["server.admin_token: is required when server.admin listens "
                                   "beyond loopback (a unix socket or a 127.0.0.1/::1 interface)"]
    assert parse(config_with(admin="tcp:9090", admin_token=TOKEN)).server.admin_token == TOKEN
    for bad in ("short", "has a space in it, 0123", 42, "x" * 257, "tab\tin-token-0123456789"):
        with pytest.raises(ConfigError) as caught:
            parse(config_with(admin_token=bad))
        assert caught.value.errors == ["server.admin_token: must be 16 to 256 printable ASCII "
                                       "characters without spaces"]
    assert TOKEN not in repr(parse(config_with(admin_token=TOKEN)))
    with pytest.raises(UsageError, match="server.admin_token: is required"):
        tap.Options().parseOptions(["--demo", "--admin", "tcp:0"])


def test_bearer_matching():
    assert bearer_matches(b"Bearer " + TOKEN.encode(), TOKEN)
    assert bearer_matches(b"bearer  " + TOKEN.encode(), TOKEN)
    for header in (None, b"", b"Bearer", b"Bearer " + TOKEN[:-1].encode(),
                   b"Basic " + TOKEN.encode(), TOKEN.encode(), b"Bearer " + TOKEN.encode() + b"x"):
        assert not bearer_matches(header, TOKEN), header


@pytest_twisted.async_yield_fixture
async def admin(make_gateway, partner):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok"),
                                           "headers": {"X-Api-Key": SECRET}}},
                                   admin_token=TOKEN))
    port = reactor.listenTCP(0, admin_site(gw.gateway), interface="127.0.0.1")
    yield gw, f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()


async def get(url: str, headers: dict | None = None):
    response = await within(treq.get(url, headers=headers or {}, persistent=False))
    return response, await within(treq.content(response))


@pytest_twisted.ensureDeferred
async def test_admin_requires_the_token_when_one_is_set(admin, logs):
    gw, base = admin
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": "Basic " + TOKEN}, {"Authorization": TOKEN}):
        response, body = await get(base + "/healthz", headers)
        assert response.code == 401, headers
        assert response.headers.getRawHeaders("WWW-Authenticate") == \
            ['Bearer realm="txfanout-admin"']
        assert json.loads(body) == {"error": "admin bearer token required"}
    response, body = await get(base + "/healthz", {"Authorization": "Bearer " + TOKEN})
    assert response.code == 200 and json.loads(body)["status"] == "ok"
    # Without a token (loopback), the same site serves everyone.
    gw.gateway.snapshot = dataclasses.replace(
        gw.gateway.snapshot, config=parse(route_config({"ok": {"url": "http://127.0.0.1:1/"}})))
    response, _ = await get(base + "/healthz")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_admin_pages_show_no_partner_secret_nor_the_token(admin, logs):
    gw, base = admin
    gw.gateway.ready = True  # as the daemon sets it once listening
    assert (await gw.post()).code == 200
    pages = [rule.rule for rule in Admin.app.url_map.iter_rules()
             if not rule.arguments and "GET" in (rule.methods or {"GET"})]
    assert "/healthz" in pages
    for page in pages:
        response, body = await get(base + page, {"Authorization": "Bearer " + TOKEN})
        assert response.code < 500, page
        assert SECRET.encode() not in body and TOKEN.encode() not in body, page


@pytest_twisted.ensureDeferred
async def test_answers_do_not_name_the_server_software(partner, make_gateway):
    gw = make_gateway(route_config({"ok": {"url": partner.url("/ok")}}))
    for answer in (await gw.post(), await gw.post("/nope")):
        assert answer.headers.getRawHeaders("Server") is None


def test_the_admin_face_closes_idle_connections():
    from txfanout.admin import ADMIN_IDLE_TIMEOUT_S, admin_site
    from txfanout.config import parse
    from txfanout.gateway import Gateway

    gateway = Gateway(reactor, parse(route_config({"ok": {"url": "http://127.0.0.1:1/"}})))
    assert admin_site(gateway).timeOut == ADMIN_IDLE_TIMEOUT_S == 60
