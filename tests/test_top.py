"""``python -m txfanout top``, the dashboards and the daemon's own wiring:
top in this process against a stand-in admin face, then against a live
``twistd fanout`` process (slow)."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from txfanout.__main__ import main
from txfanout.top import Scrape, Window, quantile, render

from .daemon import Daemon, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_quantile_interpolates_like_prometheus():
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == 0.01
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(0.5, {0.01: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.01: 1.0, float("inf"): 100.0}) == 0.01  # in +Inf: the last bound


def _exposition(requests: float, ok: float, timeouts: float, le_01: float) -> str:
    return f"""
txfanout_requests_total{{route="bid",code="200"}} {requests}
txfanout_request_duration_seconds_bucket{{route="bid",le="0.01"}} {le_01}
txfanout_request_duration_seconds_bucket{{route="bid",le="+Inf"}} {requests}
txfanout_inflight_requests 3
txfanout_shed_total{{reason="max_inflight"}} 0
txfanout_partner_calls_total{{partner="dsp-a",outcome="ok"}} {ok}
txfanout_partner_calls_total{{partner="dsp-a",outcome="timeout"}} {timeouts}
txfanout_partner_inflight{{partner="dsp-a"}} 2
txfanout_partner_circuit_open{{partner="dsp-a"}} 1
txfanout_partner_upstream{{partner="dsp-a",upstream="http://10.0.0.1:80"}} 1
txfanout_upstream_connections{{upstream="http://10.0.0.1:80",state="idle"}} 7
txfanout_upstream_connections{{upstream="http://10.0.0.1:80",state="active"}} 2
process_resident_memory_bytes 104857600
"""


def test_render_shows_what_moved_between_two_reads():
    before = Scrape.parse(_exposition(100, 90, 10, 100), 1000.0)
    after = Scrape.parse(_exposition(300, 240, 60, 250), 1002.0)
    text = render(Window(before, after), "http://127.0.0.1:9090")
    assert "requests      100.0/s   in flight 3" in text
    assert "codes     200 100.0/s" in text
    assert "p50 6.7 ms" in text  # 150 of the window's 200 requests under 10 ms
    assert "RSS 100.0 MiB" in text
    row = next(line for line in text.splitlines() if line.startswith("dsp-a"))
    assert row.split() == ["dsp-a", "100.0", "75.0%", "0.0%", "25.0%", "0.0%", "0.0%",
                           "-", "2", "OPEN", "7/2"]


class MetricsPage(BaseHTTPRequestHandler):
    """An admin face's /metrics whose counters move between two reads."""

    reads = 0

    def do_GET(self) -> None:
        type(self).reads += 1
        n = type(self).reads
        body = _exposition(100 * n, 90 * n, 10 * n, 100 * n).encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def admin_face() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsPage)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_top_once_reads_the_admin_face_twice_and_shows_what_moved(admin_face, capsys):
    MetricsPage.reads = 0
    assert main(["top", "--admin", admin_face, "--once", "--interval", "0.05"]) == 0
    assert MetricsPage.reads == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"txfanout top  http://{admin_face}")
    assert re.match(r"codes\s+200 [\d.]+/s", lines[2])
    rows = {line.split()[0]: line.split() for line in lines[6:] if line}
    assert rows["dsp-a"][9:] == ["OPEN", "7/2"]


def test_top_says_when_it_cannot_read_the_admin_face(capsys):
    assert main(["top", "--admin", f"http://127.0.0.1:{free_port()}", "--once"]) == 1
    error = capsys.readouterr().err
    assert "cannot read" in error and "Traceback" not in error
    assert main(["top", "--interval", "0"]) == 2
    assert "--interval must be from 0.05 to 3600 seconds" in capsys.readouterr().err


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A daemon with demo partners, a JSON access log and one-line log events."""
    tmp = tmp_path_factory.mktemp("live")
    demo_port = free_port()
    base = f"http://127.0.0.1:{demo_port}"
    config = tmp / "txfanout.toml"
    access = tmp / "access.log"
    config.write_text(f"""
[log]
access_log = "{access}"

[partners.fast]
url = "{base}/fast"

[partners.normal]
url = "{base}/normal"
headers = {{ "X-Api-Key" = "live-secret-99" }}

[routes.bid]
partners = ["fast", "normal"]
""")
    daemon = Daemon("--config", str(config), "--demo", "--demo-port", str(demo_port),
                    twistd_args=("--logger", "txfanout.logs.observer"))
    daemon.access_path = access  # type: ignore[attr-defined]
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def _admin(daemon: Daemon, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.admin_port}{path}",
                                    timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _bid(daemon: Daemon) -> dict:
    request = urllib.request.Request(daemon.url("/bid"), data=b"{}", method="POST",
                                     headers={"X-Request-Id": "live-1"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


@pytest.mark.slow
def test_top_once_renders_from_a_live_daemon(live):
    stop = threading.Event()

    def traffic() -> None:
        for _ in range(2000):  # bounded; stops as soon as top is done
            if stop.is_set():
                return
            _bid(live)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        top = subprocess.run(
            [sys.executable, "-m", "txfanout", "top", "--admin",
             f"127.0.0.1:{live.admin_port}", "--once", "--interval", "0.5"],
            capture_output=True, text=True, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert lines[0].startswith(f"txfanout top  http://127.0.0.1:{live.admin_port}")
    requests = re.match(r"requests\s+([\d.]+)/s", lines[1])
    assert requests and float(requests.group(1)) > 0
    assert re.match(r"codes\s+200 [\d.]+/s", lines[2])
    assert re.match(r"latency\s+p50 [\d.]+ ms\s+p99 [\d.]+ ms", lines[3])
    assert "RSS" in lines[4] and "reactor lag" in lines[4]
    rows = {line.split()[0]: line.split() for line in lines[6:] if line}
    assert float(rows["fast"][1]) > 0 and rows["fast"][2].endswith("%")
    assert rows["normal"][9] == "closed"
    assert any(key.startswith("http://127.0.0.1:") for key in rows)  # the upstream table


@pytest.mark.slow
def test_top_reports_an_unreachable_admin_face():
    top = subprocess.run([sys.executable, "-m", "txfanout", "top", "--admin",
                          f"http://127.0.0.1:{free_port()}", "--once"],
                         capture_output=True, text=True, timeout=30)
    assert top.returncode == 1
    assert "cannot read" in top.stderr and "Traceback" not in top.stderr


@pytest.mark.slow
def test_live_daemon_is_ready_and_logs_one_line_per_event(live):
    status, body = _admin(live, "/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    status, body = _admin(live, "/debug/config")
    assert status == 200 and b"live-secret-99" not in body
    line = live.wait_for(f"starting on {live.admin_port}")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[\w.-]+#info\] ", line)


@pytest.mark.slow
def test_live_daemon_writes_the_access_log(live):
    answer = _bid(live)
    assert answer["request_id"] == "live-1"
    records = [json.loads(line) for line in live.access_path.read_text().splitlines()]
    mine = [r for r in records if r["id"] == "live-1"]
    assert mine
    record = mine[-1]
    assert record["route"] == "bid" and record["status"] == 200
    assert record["elapsed_ms"] > 0
    assert {p["partner"] for p in record["partners"]} == {"fast", "normal"}
    assert all(p["outcome"] in ("ok", "http_error", "timeout") for p in record["partners"])


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b((?:txfanout|process|python)_[a-z0-9_]+)", text))


@pytest.mark.slow
def test_dashboard_and_alerts_use_metrics_the_daemon_exports(live):
    status, body = _admin(live, "/metrics")
    assert status == 200
    exported = {s for s in _metric_names(body.decode())}
    dashboard = json.loads((ROOT / "etc" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((ROOT / "etc" / "prometheus-alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {"TxfanoutOverdueInflight", "TxfanoutShedding",
                                            "TxfanoutBreakerOpen", "TxfanoutRSSGrowth",
                                            "TxfanoutHollowAnswers"}
    assert all(a["expr"] and a["labels"]["severity"] for a in alerts)
    used = _metric_names(" ".join(exprs + [a["expr"] for a in alerts]))
    assert len(used) >= 10
    if platform.python_implementation() != "CPython":  # prometheus-client: gc stats CPython-only
        used = {m for m in used if not m.startswith("python_gc_")}
    assert used <= exported, used - exported
