"""Hostile clients and partners against a real ``twistd -n fanout``, measured
from outside (RSS and CPU time from /proc, answers and timings on the wire).

    PYTHONPATH=src:. python tools/hostile_wire.py SCENARIO [options]

Scenarios (loopback only; each stops by itself):

``pipeline``         clients that pipeline requests and never read: RSS over
                     time, whether and when the gateway drops them
                     (``--connections 1 --requests 800 --answer-bytes 900000``;
                     ``--connections 5 --answer-bytes 80000``)
``chunked-client``   clients that send 64 KiB bodies as 1-byte chunks, while
                     probes send ordinary requests: the gateway's CPU per
                     chunked request, and the probes' p50 and statuses
``chunked-partner``  a partner that frames its answer in 1-byte chunks: the
                     gateway's CPU per call and the outcome
``escape``           partners that answer 1 MiB of 0xff: the answer's size
                     and the gateway's RSS under concurrent requests

The partner runs in threads of this process; the gateway is a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.daemon import Daemon  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
_payloads: dict[tuple[str, int], bytes] = {}


def payload(kind: str, size: int) -> bytes:
    """The body a partner path answers with (built once)."""
    key = (kind, size)
    if key not in _payloads:
        if kind == "big":
            _payloads[key] = b"x" * size
        elif kind == "ff":
            _payloads[key] = b"\xff" * size
        elif kind == "chunky":  # ``size`` 1-byte chunks
            _payloads[key] = b"1\r\nx\r\n" * size + b"0\r\n\r\n"
        else:
            _payloads[key] = b'{"bid": 1}'
    return _payloads[key]


class Partner(BaseHTTPRequestHandler):
    """``/big/N``, ``/ff/N``: N bytes with a Content-Length; ``/chunky/N``: N
    1-byte chunks; anything else a small JSON body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = self.path.strip("/").split("/")
        kind, size = parts[0], int(parts[1]) if len(parts) > 1 else 0
        body = payload(kind, size)
        framing = (b"Transfer-Encoding: chunked" if kind == "chunky"
                   else b"Content-Length: %d" % len(body))
        # One write: a head and a body sent apart wait for a delayed ACK.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s\r\n\r\n%s"
                         % (framing, body))

    def log_message(self, *args: Any) -> None:
        pass


class PartnerServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the gateway aborting a call is part of the scenario


def config(url: str, partners_ff: int, chunks: int) -> str:
    text = ("[server]\ndeadline_ms = 5000\nmax_inflight = 2000\nrequest_timeout_ms = 10000\n"
            "idle_timeout_ms = 30000\n")
    routes = {"ok": ["ok"], "big": ["big"], "p80": ["p80"], "chunky": ["chunky"],
              "ff": [f"ff{i}" for i in range(partners_ff)]}
    paths = {"ok": "/ok", "big": "/big/900000", "p80": "/big/80000",
             "chunky": f"/chunky/{chunks}"}
    paths.update({f"ff{i}": "/ff/1048576" for i in range(partners_ff)})
    for name, path in paths.items():
        text += f'[partners.{name}]\nurl = "{url}{path}"\ntimeout_ms = 4000\n'
        if name == "chunky":  # every sample ends too_large: measure calls, not the breaker
            text += "breaker_failures = 0\n"
    for route, names in routes.items():
        text += f"[routes.{route}]\npartners = {json.dumps(names)}\n"
    return text


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def requests_total(daemon: Daemon, route: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{daemon.admin_port}/metrics",
                                  timeout=10).read().decode()
    found = re.findall(r'txfanout_requests_total\{code="(\d+)",route="%s"\} (\S+)' % route, text)
    return {code: float(n) for code, n in found}


def request(path: str, body: bytes = b"{}", close: bool = False) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path.encode(), len(body), b"Connection: close\r\n" if close else b"", body))


def closed_by_peer(sock: socket.socket) -> bool:
    """The gateway closed or reset it (seen without reading a byte)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def pipeline(daemon: Daemon, args: argparse.Namespace) -> None:
    route = "big" if args.answer_bytes == 900000 else "p80"
    data = request("/" + route) * args.requests
    print(f"{args.connections} connection(s), each {len(data)} bytes of {args.requests} "
          f"pipelined requests for /{route} ({args.answer_bytes}-byte partner body); "
          f"the client never reads")
    pid = daemon.proc.pid
    before = rss_mb(pid)
    socks = []
    for _ in range(args.connections):
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.sendall(data)
        socks.append(sock)
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    samples = []
    while time.monotonic() - started < args.seconds:
        time.sleep(0.5)
        now = time.monotonic() - started
        for i, sock in enumerate(socks):
            if i not in closed_at and closed_by_peer(sock):
                closed_at[i] = now
        samples.append((now, rss_mb(pid)))
        if len(closed_at) == len(socks) and now > max(closed_at.values()) + 2:
            break
    for t, mb in samples[::max(1, len(samples) // 10)]:
        print(f"  t={t:5.1f}s RSS {mb:7.1f} MB")
    answered = requests_total(daemon, route)
    print(f"RSS before {before:.1f} MB, peak {rss_mb(pid, 'VmHWM'):.1f} MB, "
          f"at end {samples[-1][1]:.1f} MB")
    print(f"answered (txfanout_requests_total{{route={route!r}}}): {answered}")
    for i in range(len(socks)):
        print(f"connection {i}: " + (f"dropped by the gateway after {closed_at[i]:.1f} s"
                                     if i in closed_at else
                                     f"still open after {args.seconds} s"))
    for sock in socks:
        sock.close()


def chunked_body(size: int) -> bytes:
    return b"1\r\n \r\n" * (size - 2) + b"1\r\n{\r\n1\r\n}\r\n0\r\n\r\n"


def chunked_client(daemon: Daemon, args: argparse.Namespace) -> None:
    head = b"POST /ok HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = chunked_body(65000)
    pid = daemon.proc.pid
    # CPU per request, one at a time on one connection each.
    statuses: dict[str, int] = {}
    cpu0 = cpu_s(pid)
    for _ in range(args.samples):
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + body)
            answer = read_all(sock)
        status = answer.split(b" ", 2)[1].decode() if answer else "closed"
        statuses[status] = statuses.get(status, 0) + 1
    per = (cpu_s(pid) - cpu0) / args.samples * 1000.0
    print(f"one 64 KiB body as 65,000 1-byte chunks ({len(body)} bytes on the wire): "
          f"{per:.1f} ms of gateway CPU per request; statuses {statuses}")
    cpu0 = cpu_s(pid)
    plain = request("/ok", b"{" + b" " * 65534 + b"}", close=True)
    for _ in range(args.samples):
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.sendall(plain)
            read_all(sock)
    print(f"the same body with Content-Length: "
          f"{(cpu_s(pid) - cpu0) / args.samples * 1000.0:.1f} ms per request")
    # Attackers and probes at once.
    stop = threading.Event()
    sent = [0]

    def attack() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
                    sock.settimeout(10)
                    sock.sendall(head)
                    for i in range(0, len(body), 4096):
                        sock.sendall(body[i:i + 4096])
                        if stop.is_set():
                            return
                    sock.recv(4096)
                    sent[0] += 1
            except OSError:
                pass

    latencies: list[float] = []
    codes: dict[int, int] = {}

    def probe() -> None:
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        while not stop.is_set():
            t = time.monotonic()
            try:
                conn.request("POST", "/ok", body=b"{}")
                response = conn.getresponse()
                response.read()
                code = response.status
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
                code = 0
            latencies.append(time.monotonic() - t)
            codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=attack) for _ in range(args.clients)]
    threads += [threading.Thread(target=probe) for _ in range(args.probes)]
    for t in threads:
        t.start()
    time.sleep(args.seconds)  # the load's duration (a measurement, not a sync)
    stop.set()
    for t in threads:
        t.join()
    latencies.sort()
    print(f"{args.clients} such clients and {args.probes} probes for {args.seconds} s: "
          f"probe requests {len(latencies)}, p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, statuses {codes}; "
          f"attacker requests sent: {sent[0]}")


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def post(daemon: Daemon, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(request(path, close=True))
        return read_all(sock)


def chunked_partner(daemon: Daemon, args: argparse.Namespace) -> None:
    pid = daemon.proc.pid
    post(daemon, "/chunky")  # the pooled connection, the payload built
    cpu0 = cpu_s(pid)
    for _ in range(args.samples):
        answer = post(daemon, "/chunky")
    per = (cpu_s(pid) - cpu0) / args.samples * 1000.0
    result = json.loads(answer.split(b"\r\n\r\n", 1)[1])["results"][0]
    print(f"partner answer: {args.chunks} 1-byte chunks "
          f"({len(payload('chunky', args.chunks))} bytes "
          f"on the wire): {per:.1f} ms of gateway CPU per call; outcome {result['outcome']!r}, "
          f"error {result.get('error')!r}, body {len(result['body'] or '')} characters")
    post(daemon, "/big")
    cpu0 = cpu_s(pid)
    for _ in range(args.samples):
        post(daemon, "/big")
    print(f"a plain 900,000-byte body: {(cpu_s(pid) - cpu0) / args.samples * 1000.0:.1f} ms "
          f"per call")


def escape(daemon: Daemon, args: argparse.Namespace) -> None:
    pid = daemon.proc.pid
    answer = post(daemon, "/ff")
    head, body = answer.split(b"\r\n\r\n", 1)
    results = json.loads(body)["results"]
    print(f"{len(results)} partners x 1 MiB of 0xff: answer {len(body)} bytes; "
          f"{head.split(b' ', 2)[1].decode()}; outcomes "
          f"{sorted({r['outcome'] for r in results})}; errors "
          f"{sorted({r.get('error') or '' for r in results})}")
    before = rss_mb(pid)
    cpu0 = cpu_s(pid)
    threads = [threading.Thread(target=post, args=(daemon, "/ff"))
               for _ in range(args.concurrent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{args.concurrent} concurrent: RSS {before:.1f} MB before, peak "
          f"{rss_mb(pid, 'VmHWM'):.1f} MB; {(cpu_s(pid) - cpu0) / args.concurrent * 1000:.1f} "
          f"ms of CPU per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["pipeline", "chunked-client", "chunked-partner",
                                             "escape"])
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--answer-bytes", type=int, default=900000, choices=[900000, 80000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--partners", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--chunks", type=int, default=333333,
                        help="chunked-partner: 1-byte chunks in the answer (333333: 2 MB "
                             "on the wire, a third of the 1 MiB cap in data)")
    parser.add_argument("--extra-config", default="", help="TOML lines added to [server]")
    args = parser.parse_args()
    server = PartnerServer(("127.0.0.1", 0), Partner)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = Path(tempfile.mkdtemp())
    path = work / "txfanout.toml"
    text = config(f"http://127.0.0.1:{server.server_address[1]}", args.partners, args.chunks)
    path.write_text(text.replace("[server]\n", "[server]\n" + args.extra_config + "\n", 1))
    daemon = Daemon("--config", str(path))
    try:
        daemon.wait_ready()
        post(daemon, "/ok")
        {"pipeline": pipeline, "chunked-client": chunked_client,
         "chunked-partner": chunked_partner, "escape": escape}[args.scenario](daemon, args)
    finally:
        daemon.stop()
        server.shutdown()


if __name__ == "__main__":
    main()
