"""How long an operator's /healthz takes while slow connections hold the admin face.

    PYTHONPATH=src:. python tools/admin_starvation.py [--drippers 64] [--probes 10]
        [--timeout 5] [--no-token]

Starts ``twistd fanout`` with an admin token (``--no-token``: none), opens
``--drippers`` connections to its admin face, each sending a request line
and then one header byte every 2 s, never finishing its head (and opening a
new connection when the daemon closes one, as a determined client would).
Once they are all connected, asks ``/healthz`` (with the token) ``--probes``
times, one after the other, each on a new connection with a ``--timeout``,
and prints each probe's time, or ``timeout``. Loopback only; it stops by
itself.
"""

from __future__ import annotations

import argparse
import http.client
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.daemon import Daemon  # noqa: E402

TOKEN = "starvation-probe-token-0123456789"
DRIP_EVERY_S = 2.0


class Drippers:
    """``count`` connections dripping a request head, reopened when closed,
    in one thread until ``stop()``."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.connected = 0
        self.reopened = 0
        self._stop = threading.Event()
        for _ in range(count):
            self._open()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Drip: ")
        self.selector.register(sock, selectors.EVENT_READ)
        self.connected += 1

    def _run(self) -> None:
        next_drip = time.monotonic() + DRIP_EVERY_S
        while not self._stop.is_set():
            for key, _ in self.selector.select(max(0.0, next_drip - time.monotonic())):
                sock = key.fileobj
                try:  # closed by the daemon (or answered 408): drop it, open another
                    sock.recv(65536)  # type: ignore[union-attr]
                except OSError:
                    pass
                self.selector.unregister(sock)
                sock.close()  # type: ignore[union-attr]
                self.connected -= 1
                self.reopened += 1
                self._open()
            if time.monotonic() >= next_drip:
                for key in list(self.selector.get_map().values()):
                    try:
                        key.fileobj.send(b"a")  # type: ignore[union-attr]
                    except OSError:
                        pass  # seen as readable (closed) on the next select
                next_drip += DRIP_EVERY_S

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def probe(port: int, token: str | None, timeout: float) -> float | None:
    """Seconds one /healthz took on a new connection; None: no answer in time."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz",
                     headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        return time.monotonic() - started
    except socket.timeout:
        return None
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drippers", type=int, default=64)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--no-token", action="store_true")
    args = parser.parse_args()
    token = None if args.no_token else TOKEN
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "txfanout.toml")
        config.write_text(("[server]\n" + (f'admin_token = "{token}"\n' if token else "")
                           + '[partners.a]\nurl = "http://127.0.0.1:9/"\n'
                           + '[routes.bid]\npartners = ["a"]\n'))
        daemon = Daemon("--config", str(config))
        drippers = None
        try:
            daemon.wait_ready()
            drippers = Drippers(daemon.admin_port, args.drippers)
            time.sleep(0.5)  # nothing tells a client it was accepted: give the daemon time
            times = [probe(daemon.admin_port, token, args.timeout) for _ in range(args.probes)]
        finally:
            if drippers is not None:
                drippers.stop()
            daemon.stop()
    answered = [t for t in times if t is not None]
    print(f"{args.drippers} dripping connections, token {'set' if token else 'not set'}; "
          f"reopened by the drippers: {drippers.reopened if drippers else 0}")
    print("probes (ms): " + " ".join("timeout" if t is None else f"{t * 1000:.1f}"
                                     for t in times))
    if answered:
        print(f"answered {len(answered)}/{len(times)}, median "
              f"{statistics.median(answered) * 1000:.1f} ms, max {max(answered) * 1000:.1f} ms")
    else:
        print(f"answered 0/{len(times)} (each gave up after {args.timeout:g} s)")


if __name__ == "__main__":
    main()
