"""How long the daemon takes to start, reload and drain, with real processes.

    PYTHONPATH=src:. python tools/daemon_timings.py [--runs 5] [--inflight 200]

Start-up: from spawning ``twistd fanout`` to its ``READY=1`` on a notify
socket (the moment systemd would call it started). Reload: from SIGHUP to
the ``READY=1`` that follows ``RELOADING=1``, for a small file and a large
one. Drain: from SIGTERM to the process's exit, with N requests in flight
held by a partner that answers each after 300 ms (route ``one``: one
partner call per request); every one must get a 200 with outcome ``ok``. Loopback only; it stops by
itself. Prints medians (and the spread) in milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.daemon import Daemon, NotifySocket  # noqa: E402

DELAY_S = 0.3


class Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(DELAY_S)  # the partner's behaviour under measurement
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


class SlowServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096  # the default 5 would make the partner the bottleneck


def config(partner_url: str, partners: int, routes: int) -> str:
    text = "[server]\ndeadline_ms = 2000\n[routes.one]\npartners = [\"p0\"]\n"
    for i in range(partners):
        text += f'[partners.p{i}]\nurl = "{partner_url}/p{i}"\ntimeout_ms = 1500\n'
    for r in range(routes):
        names = ", ".join(f'"p{(r + k) % partners}"' for k in range(min(8, partners)))
        text += f"[routes.r{r}]\npartners = [{names}]\n"
    return text


def start(path: Path, notify: NotifySocket, *args: str) -> tuple[Daemon, float]:
    since = len(notify.messages)
    started = time.monotonic()
    daemon = Daemon("--config", str(path), *args, admin_ports=4,
                    env={"NOTIFY_SOCKET": notify.name})
    notify.wait_for("READY", since=since)
    return daemon, (time.monotonic() - started) * 1000.0


def reload_ms(daemon: Daemon, notify: NotifySocket) -> float:
    since = len(notify.messages)
    sent = time.monotonic()
    daemon.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", since=since)
    notify.wait_for("READY", since=notify.messages.index(reloading) + 1)
    return (time.monotonic() - sent) * 1000.0


def drain_ms(daemon: Daemon, inflight: int) -> tuple[float, int]:
    """SIGTERM with ``inflight`` requests held by the partner; (ms to exit,
    how many got a 200)."""
    answered: list[int] = []
    conns = []
    for _ in range(inflight):
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        conn.request("POST", "/one", body=b"{}")
        conns.append(conn)
    time.sleep(0.1)  # let them reach the partner (measurement, not a test)
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)

    def collect(conn: http.client.HTTPConnection) -> None:
        response = conn.getresponse()
        if response.status == 200 and b'"outcome": "ok"' in response.read():
            answered.append(200)

    threads = [threading.Thread(target=collect, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    daemon.wait(30)
    took = (time.monotonic() - sent) * 1000.0
    for t in threads:
        t.join()
    return took, len(answered)


def show(name: str, values: list[float]) -> None:
    print(f"{name:48s} median {statistics.median(values):7.1f} ms  "
          f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=200)
    args = parser.parse_args()
    server = SlowServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    work = Path(tempfile.mkdtemp())
    small, large = work / "small.toml", work / "large.toml"
    small.write_text(config(url, 8, 4))
    large.write_text(config(url, 500, 500))
    notify = NotifySocket()
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for label, extra in (("start-up to READY=1, one process", ()),
                             ("start-up to READY=1, --workers 2", ("--workers", "2"))):
            daemon, ms = start(small, notify, *extra)
            results.setdefault(label, []).append(ms)
            if not extra:
                results.setdefault("reload, 8 partners / 4 routes", []).append(
                    reload_ms(daemon, notify))
                small_text = small.read_text()
                small.write_text(large.read_text())
                results.setdefault("reload, 500 partners / 500 routes", []).append(
                    reload_ms(daemon, notify))
                small.write_text(small_text)
                reload_ms(daemon, notify)
                took, ok = drain_ms(daemon, args.inflight)
                results.setdefault(f"drain, {args.inflight} in flight (300 ms partner)",
                                   []).append(took)
                assert ok == args.inflight, f"only {ok} of {args.inflight} answered ok"
                assert daemon.proc.returncode == 0
            else:
                daemon.stop()
    for name, values in results.items():
        show(name, values)
    notify.close()
    server.shutdown()


if __name__ == "__main__":
    main()
