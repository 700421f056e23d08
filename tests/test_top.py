"""``python -m txfanout top``, the dashboards and the daemon's own wiring:
top in this process against a stand-in admin face, then against a live
``twistd fanout`` process (slow)."""

from __future__ import annotations

import json
import os
import platform
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import yaml

from txfanout.__main__ import main
from txfanout.outcomes import CallResult
from txfanout.top import Quantile, Scrape, Window, quantile, render

from .configs import route_config
from .daemon import Daemon, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_quantile_interpolates_like_prometheus():
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == Quantile(0.01)
    assert quantile(0.7, buckets).seconds == pytest.approx(0.01 + 0.09 * 20 / 40)
    assert quantile(0.99, buckets).seconds == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile(0.5, {0.01: 0.0, float("inf"): 0.0}) is None


def test_a_quantile_past_the_last_finite_bound_says_at_least():
    # 99 of 100 took longer than 5 s: the histogram only knows "over 5 s".
    buckets = {5.0: 1.0, float("inf"): 100.0}
    assert quantile(0.99, buckets) == Quantile(5.0, at_least=True)
    assert quantile(0.01, buckets) == Quantile(5.0)
    before = Scrape.parse(_exposition(0, 0, 0, 0), 1000.0)
    after = Scrape.parse(_exposition(100, 0, 0, 1), 1001.0)
    line = render(Window(before, after), "x").splitlines()[3]
    assert line.split() == ["latency", "p50", "≥10.0", "ms", "p99", "≥10.0", "ms"]


def test_call_durations_cut_at_a_timeout_read_near_it(make_gateway):
    """A partner with a 300 ms timeout whose slow calls end at 300.4 ms: its
    p99 reads within the bucket just above the timeout, not at 396 ms (a
    0.3-0.4 s bucket, interpolated)."""
    gw = make_gateway(route_config({"a": {"url": "http://127.0.0.1:1/", "timeout_ms": 300}},
                                   deadline_ms=500))
    metrics = gw.gateway.metrics
    before = Scrape.parse(metrics.exposition().decode(), 0.0)
    fanout = SimpleNamespace(partners=["a"] * 100, results=[
        CallResult("a", "timeout" if i < 5 else "ok", None, 300.4 if i < 5 else 20.0)
        for i in range(100)])
    metrics.fanout_ended(fanout)
    after = Scrape.parse(metrics.exposition().decode(), 1.0)
    p99 = Window(before, after).quantile(0.99, "txfanout_partner_call_duration_seconds",
                                         partner="a")
    assert p99 is not None and not p99.at_least
    assert 0.300 < p99.seconds <= 0.306


def _exposition(requests: float, ok: float, timeouts: float, le_01: float,
                abandoned: float = 0) -> str:
    return f"""
txfanout_requests_total{{route="bid",code="200"}} {requests}
txfanout_request_duration_seconds_bucket{{route="bid",le="0.01"}} {le_01}
txfanout_request_duration_seconds_bucket{{route="bid",le="+Inf"}} {requests}
txfanout_inflight_requests 3
txfanout_queued_requests 4
txfanout_client_connections 2500
txfanout_client_connections_held 2436
txfanout_shed_total{{reason="max_inflight"}} 0
txfanout_partner_calls_total{{partner="dsp-a",outcome="ok"}} {ok}
txfanout_partner_calls_total{{partner="dsp-a",outcome="timeout"}} {timeouts}
txfanout_partner_calls_total{{partner="dsp-a",outcome="abandoned"}} {abandoned}
txfanout_partner_inflight{{partner="dsp-a"}} 2
txfanout_partner_timeout_seconds{{partner="dsp-a"}} 0.12
txfanout_partner_circuit_open{{partner="dsp-a"}} 1
txfanout_partner_upstream{{partner="dsp-a",upstream="http://10.0.0.1:80"}} 1
txfanout_upstream_connections{{upstream="http://10.0.0.1:80",state="idle"}} 7
txfanout_upstream_connections{{upstream="http://10.0.0.1:80",state="active"}} 2
process_resident_memory_bytes 104857600
"""


def test_render_shows_what_moved_between_two_reads():
    before = Scrape.parse(_exposition(100, 90, 10, 100, abandoned=5), 1000.0)
    after = Scrape.parse(_exposition(300, 240, 60, 250, abandoned=55), 1002.0)
    text = render(Window(before, after), "http://127.0.0.1:9090")
    assert "requests      100.0/s   in flight 3   waiting 4   overdue 0" in text
    assert "codes     200 100.0/s" in text
    assert "clients 2500 (2436 held)" in text
    assert "p50 6.7 ms" in text  # 150 of the window's 200 requests under 10 ms
    assert "RSS 100.0 MiB" in text
    row = next(line for line in text.splitlines() if line.startswith("dsp-a"))
    assert row.split() == ["dsp-a", "125.0", "60.0%", "0.0%", "20.0%", "0.0%", "20.0%",
                           "0.0%", "0.0%", "-", "120.0", "2", "OPEN", "7/2"]


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
    assert rows["dsp-a"][12:] == ["OPEN", "7/2"]


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
@pytest.mark.runtime_neutral
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
    assert rows["normal"][10] == "300.0"  # its timeout now (timeout_ms: not adaptive)
    assert rows["normal"][12] == "closed"
    assert any(key.startswith("http://127.0.0.1:") for key in rows)  # the upstream table


@pytest.mark.slow
@pytest.mark.runtime_neutral
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


class _Metrics(BaseHTTPRequestHandler):
    """An admin face on loopback that serves a fixed /metrics to the bearer
    of TOKEN only (401 otherwise), as server.admin_token does."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _exposition(100, 90, 10, 100).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


TOKEN = "0123456789abcdef-top-token"


@pytest.fixture
def guarded_admin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _top(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TXFANOUT_ADMIN_TOKEN"}
    return subprocess.run([sys.executable, "-m", "txfanout", "top", "--once",
                           "--interval", "0.05", *args], capture_output=True, text=True,
                          timeout=30, env={**environ, **(env or {})})


@pytest.mark.slow  # runs top as a process, as an operator does
@pytest.mark.runtime_neutral
def test_top_takes_the_admin_token(guarded_admin):
    refused = _top("--admin", guarded_admin)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        f"top: cannot read {guarded_admin}/metrics: it needs the admin token "
        "(server.admin_token): give --token or set TXFANOUT_ADMIN_TOKEN")
    wrong = _top("--admin", guarded_admin, "--token", "not-the-token-at-all")
    assert wrong.returncode == 1 and "the token was refused" in wrong.stderr
    by_option = _top("--admin", guarded_admin, "--token", TOKEN)
    assert by_option.returncode == 0 and "dsp-a" in by_option.stdout, by_option.stderr
    by_environment = _top("--admin", guarded_admin, env={"TXFANOUT_ADMIN_TOKEN": TOKEN})
    assert by_environment.returncode == 0 and "dsp-a" in by_environment.stdout


def _read_until(fd: int, text: bytes, timeout: float = 20.0) -> bytes:
    seen, end = b"", time.monotonic() + timeout
    while text not in seen:
        left = end - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], seen
        seen += os.read(fd, 65536)
    return seen


@pytest.mark.slow  # a real terminal and process
@pytest.mark.runtime_neutral
@pytest.mark.parametrize("how", ["q", "ctrl-c"])
def test_top_on_a_terminal_quits_on_q_and_ctrl_c(guarded_admin, how):
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    # Ctrl-C as on an operator's terminal: a suite run as a background job
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    top = subprocess.Popen([sys.executable, "-m", "txfanout", "top", "--admin", guarded_admin,
                            "--interval", "0.1"], stdin=terminal, stdout=terminal,
                           stderr=terminal, env={**os.environ, "TXFANOUT_ADMIN_TOKEN": TOKEN},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    reading = threading.Event()
    screen = threading.Thread(target=_show, args=(controller, reading))
    try:
        _read_until(controller, b"dsp-a")  # a first view is on the screen
        reading.set()
        screen.start()  # and the terminal goes on showing the next ones
        if how == "q":
            os.write(controller, b"q")
        else:
            top.send_signal(signal.SIGINT)
        assert top.wait(10) == 0
        assert termios.tcgetattr(terminal) == before  # echo and line mode are back
    finally:
        reading.clear()
        if screen.is_alive():
            screen.join(10)
        if top.poll() is None:
            top.kill()
            top.wait(10)
        os.close(controller)
        os.close(terminal)


def _show(fd: int, reading: threading.Event) -> None:
    """Read what a program writes to the terminal while ``reading`` is set,
    as a terminal does (one that stops reading blocks the program's next
    write once its buffer is full)."""
    while reading.is_set():
        if select.select([fd], [], [], 0.05)[0]:
            try:
                os.read(fd, 65536)
            except OSError:
                return
