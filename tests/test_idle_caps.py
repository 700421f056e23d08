"""Idle partner connections are capped per upstream by that upstream's own
partners' concurrency, not by the busiest upstream's: in memory on a fake
clock (tests/fakes.py), and once over real TLS."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.web.http_headers import Headers

from txfanout.config import parse
from txfanout.upstream import pool_key

from .configs import route_config
from .fakes import Network, fired
from .loopback import within


def idle(gw: Any, partner_name: str) -> int:
    """Idle connections the pool holds for one partner's key."""
    key = pool_key(gw.gateway.snapshot.partners[partner_name].config)
    return len(gw.gateway.upstream.pool._connections.get(key, []))


def calls_at_once(gw: Any, calls: dict[str, int]) -> list[Any]:
    """``calls[name]`` calls to each partner at once, straight through the
    pool (the gateway's per-partner slots would keep them under the cap)."""
    upstream = gw.gateway.upstream
    partners = gw.gateway.snapshot.partners
    return [upstream.call(partners[name].config, partners[name].url, Headers(), b"{}", 5.0)
            for name, count in calls.items() for _ in range(count)]


def test_each_upstream_keeps_at_most_its_own_cap_idle(net: Network):
    partner, other_partner = net.partner(), net.partner()
    gw = net.gateway(route_config({
        "a": {"url": partner.url("/ok"), "max_concurrency": 1},
        "b": {"url": other_partner.url("/ok"), "max_concurrency": 8}}))
    results = gatherResults(calls_at_once(gw, {"a": 4, "b": 4}))
    net.run()
    assert {r.outcome for r in fired(results)} == {"ok"}
    assert partner.connections == 4 and other_partner.connections == 4
    assert idle(gw, "a") == 1  # the rest closed as they came back
    assert idle(gw, "b") == 4
    assert partner.open_connections == 1 and other_partner.open_connections == 4


def test_a_reload_that_lowers_a_cap_closes_the_surplus(net: Network):
    partner, other_partner = net.partner(), net.partner()
    config = route_config({"a": {"url": partner.url("/delay/100"), "max_concurrency": 8},
                           "b": {"url": other_partner.url("/ok"), "max_concurrency": 8}})
    gw = net.gateway(config)
    clients = [gw.send() for _ in range(4)]
    answers = [gw.answer(c) for c in clients]
    assert [a.outcomes() for a in answers] == [{"a": "ok", "b": "ok"}] * 4
    assert idle(gw, "a") == 4 and partner.open_connections == 4
    idle_b = idle(gw, "b")  # 1 to 4: calls to it may have reused a connection

    config["partners"]["a"]["max_concurrency"] = 1
    gw.gateway.reconfigure(parse(config))
    assert idle(gw, "a") == 1 and idle(gw, "b") == idle_b
    net.run()
    assert partner.open_connections == 1
    assert gw.post().outcomes() == {"a": "ok", "b": "ok"}
    assert idle(gw, "a") == 1


@pytest_twisted.ensureDeferred
async def test_tls_connections_are_capped_under_their_profile_key(pki, tls_partner,
                                                                  make_gateway):
    server = tls_partner(pki.server)
    gw = make_gateway(route_config({
        "p": {"url": server.url("/ok"), "ca_file": str(pki.ca), "max_concurrency": 2},
        "big": {"url": "http://127.0.0.1:1/", "max_concurrency": 8}}))
    results = await within(gatherResults(calls_at_once(gw, {"p": 3})))
    assert {r.outcome for r in results} == {"ok"}
    assert idle(gw, "p") == 2
    assert list(gw.gateway.upstream.pool._connections) == [
        pool_key(gw.gateway.snapshot.partners["p"].config)]
