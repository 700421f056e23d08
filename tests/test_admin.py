"""The admin face against a gateway with real loopback partners."""

from __future__ import annotations

import gc
from typing import Any, AsyncIterator

import os
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

import txfanout
from txfanout import upstream as upstream_module
from txfanout.admin import admin_site
from txfanout.memory import TRACEMALLOC, AllocationSites

from .certs import TestPKI
from .conftest import Answer, route_config, within
from .partners import PartnerServer


def one(partner, path, **extra):
    return {"url": partner.url(path), **extra}


class AdminUnderTest:
    def __init__(self, gateway: Any, sites: AllocationSites | None = None) -> None:
        self.port = reactor.listenTCP(0, admin_site(gateway, sites), interface="127.0.0.1")

    async def get(self, path: str) -> Answer:
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}"
        response = await within(treq.get(url, persistent=False))
        return Answer(response.code, response.headers, await within(treq.content(response)))


@pytest_twisted.async_yield_fixture
async def make_admin() -> AsyncIterator[Any]:
    started: list[AdminUnderTest] = []

    def make(gateway: Any, sites: AllocationSites | None = None) -> AdminUnderTest:
        admin = AdminUnderTest(gateway, sites)
        started.append(admin)
        return admin

    yield make
    for admin in started:
        await admin.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_health_readiness_and_metrics(partner, make_gateway, make_admin):
    gw = make_gateway(route_config({"a": one(partner, "/ok")}))
    admin = make_admin(gw.gateway)
    assert (await admin.get("/healthz")).json == {"status": "ok", "inflight": 0,
                                                  "pid": os.getpid(),
                                                  "version": txfanout.__version__}
    starting = await admin.get("/readyz")
    assert starting.code == 503 and starting.json == {"status": "starting"}
    gw.gateway.ready = True
    assert (await admin.get("/readyz")).code == 200
    gw.gateway.admission.draining = True
    draining = await admin.get("/readyz")
    assert draining.code == 503 and draining.json == {"status": "draining"}
    gw.gateway.admission.draining = False
    await gw.post()
    metrics = await admin.get("/metrics")
    assert metrics.code == 200
    assert metrics.header("Content-Type").startswith("text/plain; version=0.0.4")
    text = metrics.body.decode()
    assert 'txfanout_requests_total{code="200",route="bid"} 1.0' in text
    assert "_created" not in text
    assert (await admin.get("/nothing-here")).code == 404
    assert set((await admin.get("/")).json) >= {"/metrics", "/debug/inflight"}


@pytest_twisted.ensureDeferred
async def test_debug_inflight_shows_where_each_call_is(partner, make_gateway, make_admin,
                                                        monkeypatch):
    hang = PartnerServer().start()
    try:
        gw = make_gateway(route_config({
            "fast": one(partner, "/ok"),
            "hang": one(hang, "/hang", timeout_ms=5000),
            "drip": one(partner, "/drip/100", timeout_ms=5000),
        }, deadline_ms=10000))
        admin = make_admin(gw.gateway)
        # Events from the gateway's own code, so no polling is needed: each
        # call's result, and the response headers of the dripping partner.
        results: list[Deferred] = []
        call = gw.gateway.upstream.call

        def recording_call(*args, **kwargs):
            d = call(*args, **kwargs)
            results.append(d)
            return d

        monkeypatch.setattr(gw.gateway.upstream, "call", recording_call)
        headers_in: Deferred = Deferred()
        read_capped = upstream_module._read_capped

        def reading(response, limit, phase=None):
            d = read_capped(response, limit, phase)
            if response.length == 100 and not headers_in.called:
                headers_in.callback(None)
            return d

        monkeypatch.setattr(upstream_module, "_read_capped", reading)

        arrived = hang.wait_request()
        held = Deferred.fromCoroutine(gw.post(headers={"X-Request-Id": "held-1"}))
        second: Deferred = Deferred()
        await within(arrived)
        await within(results[0])  # the fast partner's call has ended
        await within(headers_in)
        view = await admin.get("/debug/inflight")
        assert view.code == 200
        assert view.json["count"] == 1
        (req,) = view.json["requests"]
        assert req["id"] == "held-1" and req["route"] == "bid"
        assert req["deadline_ms"] == 10000.0
        assert 0 <= req["age_ms"] < 5000 and req["left_ms"] > 5000
        states = {p["partner"]: p["state"] for p in req["partners"]}
        assert states == {"fast": "done:ok", "hang": "sent", "drip": "reading"}
        assert all(p["elapsed_ms"] >= 0 for p in req["partners"])

        # A second request: the oldest comes first and ?limit bounds the list.
        arrived = hang.wait_request()
        second = Deferred.fromCoroutine(gw.post(headers={"X-Request-Id": "held-2"}))
        await within(arrived)
        view = await admin.get("/debug/inflight?limit=1")
        assert view.json["count"] == 2
        assert [r["id"] for r in view.json["requests"]] == ["held-1"]
        view = await admin.get("/debug/inflight")
        assert [r["id"] for r in view.json["requests"]] == ["held-1", "held-2"]
        for bad in ("0", "10001", "x", "-1", "1e3"):
            answer = await admin.get(f"/debug/inflight?limit={bad}")
            assert answer.code == 400
            assert "limit must be an integer from 1 to 10000" in answer.json["error"]
        # The clients give up: their fan-outs are cancelled and leave the view.
        for request in (held, second):
            lost = hang.wait_hang_lost()
            request.cancel()
            await within(lost)
        assert (await admin.get("/debug/inflight")).json == {"count": 0, "requests": []}
    finally:
        for request in (held, second):
            request.addErrback(lambda f: None)
            request.cancel()
        await hang.stop()


@pytest_twisted.ensureDeferred
async def test_debug_config_redacts_secrets(partner, make_gateway, make_admin):
    gw = make_gateway(route_config({
        "a": {"url": partner.url("/ok?token=query-secret-42"),
              "headers": {"X-Api-Key": "header-secret-17", "Authorization": "Bearer abc.def"}},
        "b": one(partner, "/ok", countries=["DE", "FR"]),
    }, deadline_ms=700))
    admin = make_admin(gw.gateway)
    view = await admin.get("/debug/config")
    assert view.code == 200
    for secret in (b"query-secret-42", b"header-secret-17", b"abc.def"):
        assert secret not in view.body
    config = view.json
    assert config["server"]["deadline_ms"] == 700
    a = config["partners"]["a"]
    assert a["headers"] == {"X-Api-Key": "<redacted>", "Authorization": "<redacted>"}
    assert a["url"].endswith("/ok?<redacted>")
    assert config["partners"]["b"]["countries"] == ["DE", "FR"]
    assert config["routes"]["bid"]["partners"] == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_debug_config_with_an_https_partner(partner, make_gateway, make_admin, tmp_path):
    pki = TestPKI(tmp_path)
    gw = make_gateway(route_config({
        "a": one(partner, "/ok"),
        "s": {"url": "https://127.0.0.1:1/bid", "ca_file": str(pki.ca),
              "client_cert": str(pki.client.cert), "client_key": str(pki.client.key),
              "tls_min_version": "1.3"},
    }))
    view = await make_admin(gw.gateway).get("/debug/config")
    assert view.code == 200, view.body
    s = view.json["partners"]["s"]
    assert "tls" not in s  # derived from the keys below, which show it
    assert (s["ca_file"], s["client_cert"], s["tls_min_version"], s["tls_verify"]) == \
        (str(pki.ca), str(pki.client.cert), "1.3", True)
    assert s["client_key"] == "<redacted>"
    assert b"-----BEGIN" not in view.body


@pytest_twisted.ensureDeferred
async def test_debug_pool(partner, make_gateway, make_admin):
    gw = make_gateway(route_config({"a": one(partner, "/ok"), "b": one(partner, "/echo")}))
    admin = make_admin(gw.gateway)
    assert (await admin.get("/debug/pool")).json["upstreams"] == []
    await gw.post()
    await gw.post()
    pool = (await admin.get("/debug/pool")).json
    (row,) = pool["upstreams"]
    assert row == {"upstream": f"http://127.0.0.1:{partner.port.getHost().port}",
                   "idle": 2, "active": 0, "opened": 2, "closed": 0,
                   "max_idle": 512}  # two partners capped at 256 each
    assert pool["max_idle_per_upstream"] == 512  # the cap for upstreams not configured
    assert partner.open_connections == 2


@pytest_twisted.ensureDeferred
async def test_debug_memory(partner, make_gateway, make_admin):
    gw = make_gateway(route_config({"a": one(partner, "/ok")}))
    plain = make_admin(gw.gateway)
    view = (await plain.get("/debug/memory?types=3")).json
    assert view["rss_bytes"] > 1e6
    assert view["gc"]["tracked_objects"] > 1000
    if hasattr(gc, "get_count"):  # CPython's generations
        assert len(view["gc"]["counts"]) == 3 and len(view["gc"]["generations"]) == 3
    else:  # PyPy
        assert view["gc"] == {"counts": None, "thresholds": None, "generations": None,
                              "tracked_objects": view["gc"]["tracked_objects"]}
    assert len(view["top_types"]) == 3
    assert view["top_types"][0]["count"] >= view["top_types"][1]["count"]
    assert view["tracemalloc"]["enabled"] is False
    assert (await plain.get("/debug/memory?types=0")).code == 400
    if not TRACEMALLOC:  # PyPy
        assert "not available" in view["tracemalloc"]["hint"]
        with pytest.raises(RuntimeError, match="tracemalloc is not available"):
            AllocationSites(4)
        return
    assert "--tracemalloc N" in view["tracemalloc"]["hint"]

    sites = AllocationSites(4)
    sites.start()
    try:
        traced = make_admin(gw.gateway, sites)
        first = (await traced.get("/debug/memory")).json["tracemalloc"]
        assert first["enabled"] and first["diff"] is None
        assert 0 < len(first["top"]) <= 4
        assert all(s["size_bytes"] > 0 and ":" in s["site"] for s in first["top"])
        keep = [bytearray(1000) for _ in range(2000)]  # 2 MB more at one site
        second = (await traced.get("/debug/memory")).json["tracemalloc"]
        assert second["diff"], second
        grown = second["diff"][0]
        assert grown["site"].endswith(f"test_admin.py:{_line_of('keep = [bytearray')}")
        assert grown["size_diff"] >= 2000 * 1000
        del keep
    finally:
        sites.stop()


def _line_of(text: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        return next(n for n, line in enumerate(f, 1) if text in line and "_line_of" not in line)


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/debug/inflight",
                                  "/debug/memory", "/debug/pool", "/debug/config"])
@pytest_twisted.ensureDeferred
async def test_admin_paths_are_not_on_the_public_listener(path, partner, make_gateway):
    gw = make_gateway(route_config({"a": one(partner, "/ok")}))
    for method in ("GET", "POST"):
        answer = await gw.post(path, method=method)
        assert answer.code == 404
        assert answer.json == {"error": "no such route"}
    assert partner.seen == 0
