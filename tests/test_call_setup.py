"""What a call sends, prepared once per partner: Host, and the headers copy."""

from __future__ import annotations

import json

import pytest
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers

from txfanout.fanout import call_headers
from txfanout.upstream import host_header

from .configs import route_config


@pytest.mark.parametrize("url", [
    b"http://127.0.0.1:8080/bid", b"http://127.0.0.1/bid", b"http://[::1]:9000/x",
    b"https://example.com/x", b"https://example.com:8443/x", b"http://example.com:443/x",
])
def test_host_is_what_twisteds_agent_would_send(url: bytes) -> None:
    uri = URI.fromBytes(url)
    assert host_header(url) == Agent._computeHostValue(None, uri.scheme, uri.host, uri.port)


def test_the_prepared_headers_are_left_as_they_were() -> None:
    prepared = Headers({b"Content-Type": [b"application/json"], b"X-Key": [b"secret"]})
    first = call_headers(prepared, ((b"X-Request-Id", b"a"),))
    call_headers(prepared, ((b"X-Request-Id", b"b"), (b"X-Key", b"other")))
    assert first.getRawHeaders(b"X-Request-Id") == [b"a"]
    assert first.getRawHeaders(b"X-Key") == [b"secret"]
    assert dict(prepared.getAllRawHeaders()) == {
        b"Content-Type": [b"application/json"], b"X-Key": [b"secret"]}


def test_a_partner_gets_one_host_header_and_the_call_headers(net):
    partner = net.partner()
    gw = net.gateway(route_config({"echo": {"url": partner.url("/echo"),
                                            "headers": {"X-Api-Key": "k1"}}}))
    for request_id in ("first", "second"):
        answer = gw.post(headers={"X-Request-Id": request_id})
        [result] = answer.json["results"]
        seen = json.loads(result["body"])["headers"]
        assert seen["Host"] == [f"127.0.0.1:{partner.port.getHost().port}"]
        assert seen["X-Request-Id"] == [request_id] and seen["X-Api-Key"] == ["k1"]
