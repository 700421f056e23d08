"""The admin face's pages, against a gateway and partners in memory on a
fake clock (tests/fakes.py). The pages are asked of the admin resource
through treq.testing.StubTreq: in memory too, and what the page says is
all these tests look at (the admin face's own channel and site, its
deadlines, caps and refusals, are in test_admin_limits and test_admin_cap)."""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest
from treq.testing import StubTreq

import txfanout
from txfanout.admin import Admin
from txfanout.memory import TRACEMALLOC, AllocationSites

from .certs import TestPKI
from .configs import route_config
from .fakes import FakeAnswer, Network, fired


def one(partner, path, **extra):
    return {"url": partner.url(path), **extra}


class AdminUnderTest:
    """The admin resource of ``gateway``, asked through StubTreq."""

    def __init__(self, gateway: Any, sites: AllocationSites | None = None) -> None:
        self.stub = StubTreq(Admin(gateway, sites).app.resource())

    def get(self, path: str) -> FakeAnswer:
        response = self._fired(self.stub.get(f"http://admin.test{path}"))
        body = self._fired(self.stub.content(response))
        return FakeAnswer(response.code, response.headers, body)

    def _fired(self, d: Any) -> Any:
        self.stub.flush()
        return fired(d)


def test_health_readiness_and_metrics(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok")}))
    admin = AdminUnderTest(gw.gateway)
    assert admin.get("/healthz").json == {"status": "ok", "inflight": 0, "pid": os.getpid(),
                                          "version": txfanout.__version__}
    starting = admin.get("/readyz")
    assert starting.code == 503 and starting.json == {"status": "starting"}
    gw.gateway.ready = True
    assert admin.get("/readyz").code == 200
    gw.gateway.admission.draining = True
    draining = admin.get("/readyz")
    assert draining.code == 503 and draining.json == {"status": "draining"}
    gw.gateway.admission.draining = False
    gw.post()
    metrics = admin.get("/metrics")
    assert metrics.code == 200
    assert metrics.header("Content-Type").startswith("text/plain; version=0.0.4")
    text = metrics.body.decode()
    assert 'txfanout_requests_total{code="200",route="bid"} 1.0' in text
    assert "_created" not in text
    assert admin.get("/nothing-here").code == 404
    assert set(admin.get("/").json) >= {"/metrics", "/debug/inflight"}


def test_debug_inflight_shows_where_each_call_is(net: Network):
    partner, hang = net.partner(), net.partner()
    gw = net.gateway(route_config({
        "fast": one(partner, "/ok"),
        "hang": one(hang, "/hang", timeout_ms=5000),
        "drip": one(partner, "/drip/100", timeout_ms=5000),
    }, deadline_ms=10000))
    admin = AdminUnderTest(gw.gateway)
    held = gw.send(headers={"X-Request-Id": "held-1"})
    net.advance(0.12)  # the fast call is done, the drip's head and 3 bytes are in
    view = admin.get("/debug/inflight")
    assert view.code == 200
    assert view.json["count"] == 1
    (req,) = view.json["requests"]
    assert req["id"] == "held-1" and req["route"] == "bid"
    assert req["deadline_ms"] == 10000.0
    assert req["age_ms"] == 120.0 and req["left_ms"] == 9880.0
    states = {p["partner"]: p["state"] for p in req["partners"]}
    assert states == {"fast": "done:ok", "hang": "sent", "drip": "reading"}
    assert {p["partner"]: p["elapsed_ms"] for p in req["partners"]} == \
        {"fast": 0.0, "hang": 120.0, "drip": 120.0}
    # the timeout each call was given (the fast one's cut by nothing: its 300 ms)
    assert {p["partner"]: p["timeout_ms"] for p in req["partners"]} == \
        {"fast": 300, "hang": 5000, "drip": 5000}

    # A second request: the oldest comes first and ?limit bounds the list.
    second = gw.send(headers={"X-Request-Id": "held-2"})
    net.run()
    view = admin.get("/debug/inflight?limit=1")
    assert view.json["count"] == 2
    assert [r["id"] for r in view.json["requests"]] == ["held-1"]
    view = admin.get("/debug/inflight")
    assert [r["id"] for r in view.json["requests"]] == ["held-1", "held-2"]
    for bad in ("0", "10001", "x", "-1", "1e3"):
        answer = admin.get(f"/debug/inflight?limit={bad}")
        assert answer.code == 400
        assert "limit must be an integer from 1 to 10000" in answer.json["error"]
    # The clients give up: their fan-outs are cancelled and leave the view.
    for client in (held, second):
        client.close()
    net.run()
    assert hang.lost_count == 2
    assert admin.get("/debug/inflight").json == {"count": 0, "requests": [], "tail_samples": {}}


def test_debug_config_redacts_secrets(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({
        "a": {"url": partner.url("/ok?token=query-secret-42"),
              "headers": {"X-Api-Key": "header-secret-17", "Authorization": "Bearer abc.def"}},
        "b": one(partner, "/ok", countries=["DE", "FR"]),
    }, deadline_ms=700))
    admin = AdminUnderTest(gw.gateway)
    view = admin.get("/debug/config")
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


def test_debug_config_with_an_https_partner(net: Network, tmp_path):
    partner = net.partner()
    pki = TestPKI(tmp_path)
    gw = net.gateway(route_config({
        "a": one(partner, "/ok"),
        "s": {"url": "https://127.0.0.1:1/bid", "ca_file": str(pki.ca),
              "client_cert": str(pki.client.cert), "client_key": str(pki.client.key),
              "tls_min_version": "1.3"},
    }))
    view = AdminUnderTest(gw.gateway).get("/debug/config")
    assert view.code == 200, view.body
    s = view.json["partners"]["s"]
    assert "tls" not in s  # derived from the keys below, which show it
    assert (s["ca_file"], s["client_cert"], s["tls_min_version"], s["tls_verify"]) == \
        (str(pki.ca), str(pki.client.cert), "1.3", True)
    assert s["client_key"] == "<redacted>"
    assert b"-----BEGIN" not in view.body


def test_debug_pool(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok"), "b": one(partner, "/echo")}))
    admin = AdminUnderTest(gw.gateway)
    assert admin.get("/debug/pool").json["upstreams"] == []
    gw.post()
    gw.post()
    pool = admin.get("/debug/pool").json
    (row,) = pool["upstreams"]
    assert row == {"upstream": f"http://127.0.0.1:{partner.port.getHost().port}",
                   "idle": 2, "active": 0, "opened": 2, "closed": 0,
                   "max_idle": 512}  # two partners capped at 256 each
    assert pool["max_idle_per_upstream"] == 512  # the cap for upstreams not configured
    assert partner.open_connections == 2


def test_debug_memory(net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok")}))
    plain = AdminUnderTest(gw.gateway)
    view = plain.get("/debug/memory?types=3").json
    assert view["rss_bytes"] > 1e6
    assert view["gc"]["tracked_objects"] > 1000
    if hasattr(gc, "get_count"):  # CPython's generations
        assert len(view["gc"]["counts"]) == 3 and len(view["gc"]["generations"]) == 3
    else:  # PyPy
        assert view["gc"] == {"counts": None, "thresholds": None, "generations": None,
                              "frozen": None,
                              "tracked_objects": view["gc"]["tracked_objects"]}
    assert len(view["top_types"]) == 3
    assert view["top_types"][0]["count"] >= view["top_types"][1]["count"]
    assert view["tracemalloc"]["enabled"] is False
    assert plain.get("/debug/memory?types=0").code == 400
    if not TRACEMALLOC:  # PyPy
        assert "not available" in view["tracemalloc"]["hint"]
        with pytest.raises(RuntimeError, match="tracemalloc is not available"):
            AllocationSites(4)
        return
    assert "--tracemalloc N" in view["tracemalloc"]["hint"]

    sites = AllocationSites(4)
    sites.start()
    try:
        traced = AdminUnderTest(gw.gateway, sites)
        first = traced.get("/debug/memory").json["tracemalloc"]
        assert first["enabled"] and first["diff"] is None
        assert 0 < len(first["top"]) <= 4
        assert all(s["size_bytes"] > 0 and ":" in s["site"] for s in first["top"])
        keep = [bytearray(1000) for _ in range(2000)]  # 2 MB more at one site
        second = traced.get("/debug/memory").json["tracemalloc"]
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
def test_admin_paths_are_not_on_the_public_listener(path, net: Network):
    partner = net.partner()
    gw = net.gateway(route_config({"a": one(partner, "/ok")}))
    for method in ("GET", "POST"):
        answer = gw.post(path, method=method)
        assert answer.code == 404
        assert answer.json == {"error": "no such route"}
    assert partner.seen == 0
