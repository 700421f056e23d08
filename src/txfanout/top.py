"""``txfanout top``: a live terminal view of a running gateway.

Reads the admin face's ``/metrics`` once per interval and shows what moved
in between: requests/s by code, in-flight, shed, p50/p99, RSS, CPU, reactor
lag, then a row per partner (calls/s, outcome shares, p99, in-flight,
breaker, timeout (adaptive or not), connections of its upstream; calls/s
counts calls not made too, such as ``rate_limited`` ones), and for partners
with tail samples the share of sampled timeouts a timeout 50% or 100%
longer would have answered. ``q`` or Ctrl-C quits. Not on a
TTY, or with ``--once``, it prints one view (two reads an interval apart)
and exits. An admin face with ``server.admin_token`` needs the token:
``--token`` or the environment variable ``TXFANOUT_ADMIN_TOKEN``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import select
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Iterable, TextIO

from prometheus_client.parser import text_string_to_metric_families

from .config import ServerConfig

Labels = tuple[tuple[str, str], ...]
_CLEAR = "\x1b[H\x1b[2J"
_OUTCOMES = ("ok", "http_error", "timeout", "error", "abandoned", "rate_limited")  # the rest: "other"
TOKEN_VARIABLE = "TXFANOUT_ADMIN_TOKEN"
DEFAULT_ADMIN = "http://127.0.0.1:" + re.findall(r"\d+", ServerConfig().admin)[0]


@dataclass(frozen=True)
class Quantile:
    """A quantile read from a histogram: ``seconds``, or at least that much
    (``at_least``) when it lies past the largest finite bound."""

    seconds: float
    at_least: bool = False


@dataclass
class Scrape:
    """One read of /metrics: sample name -> labels -> value, and when."""

    at: float
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, at: float) -> "Scrape":
        scrape = cls(at)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                series = scrape.samples.setdefault(s.name, {})
                series[tuple(sorted(s.labels.items()))] = s.value
        return scrape

    def values(self, name: str, **match: str) -> Iterable[tuple[dict[str, str], float]]:
        for labels, value in self.samples.get(name, {}).items():
            d = dict(labels)
            if all(d.get(k) == v for k, v in match.items()):
                yield d, value

    def total(self, name: str, **match: str) -> float:
        return sum(v for _, v in self.values(name, **match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for d, v in self.values(name, **match):
            out[d.get(label, "")] = out.get(d.get(label, ""), 0.0) + v
        return out

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """Cumulative counts by upper bound, summed over matching series."""
        out: dict[float, float] = {}
        for d, v in self.values(name + "_bucket", **match):
            le = float(d["le"])
            out[le] = out.get(le, 0.0) + v
        return out


def quantile(q: float, buckets: dict[float, float]) -> Quantile | None:
    """Prometheus' histogram_quantile on cumulative ``buckets`` (linear
    within the bucket the rank falls in, so never past that bucket's upper
    bound); in the +Inf bucket, the largest finite bound, marked
    ``at_least``. None when they are empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return Quantile(lower, at_least=True)
            if count == below:
                return Quantile(le)
            return Quantile(lower + (le - lower) * (rank - below) / (count - below))
        lower, below = le, count
    return Quantile(lower, at_least=True)


class Window:
    """What moved between two scrapes."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after
        self.seconds = max(after.at - before.at, 1e-9)

    def rate(self, name: str, **match: str) -> float:
        delta = self.after.total(name, **match) - self.before.total(name, **match)
        return max(0.0, delta) / self.seconds  # a restart resets counters

    def rates_by(self, name: str, label: str, **match: str) -> dict[str, float]:
        before = self.before.by(name, label, **match)
        return {k: max(0.0, v - before.get(k, 0.0)) / self.seconds
                for k, v in self.after.by(name, label, **match).items()}

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """A histogram's cumulative counts by upper bound, over the window."""
        before = self.before.buckets(name, **match)
        return {le: c - before.get(le, 0.0)
                for le, c in self.after.buckets(name, **match).items()}

    def quantile(self, q: float, name: str, **match: str) -> Quantile | None:
        return quantile(q, self.buckets(name, **match))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000.0:.1f}"


def _q_ms(value: Quantile | None) -> str:
    if value is None:
        return "-"
    return ("≥" if value.at_least else "") + _ms(value.seconds)


def _timeout_ms(scrape: Scrape, partner: str) -> str:
    found = [v for _, v in scrape.values("txfanout_partner_timeout_seconds", partner=partner)]
    return _ms(found[0]) if found else "-"


def _share(part: float, whole: float) -> str:
    return "-" if whole <= 0 else f"{100.0 * part / whole:.1f}%"


def _mib(n: float) -> str:
    return f"{n / 1048576.0:.1f} MiB"


def _tail_table(w: Window, partners: list[str]) -> list[str]:
    """Per partner that has tail samples (tail.py): how many ended in the
    window, the share a timeout 50% and 100% longer would have answered,
    and how many run now."""
    rows = []
    for p in partners:
        running = w.after.total("txfanout_partner_tail_running", partner=p)
        if not running and not w.after.total("txfanout_partner_tail_ratio_count", partner=p):
            continue
        ended = w.buckets("txfanout_partner_tail_ratio", partner=p)
        samples = ended.get(math.inf, 0.0)
        rows.append(f"{p[:20]:<20} {samples:8.0f} {_share(ended.get(1.5, 0.0), samples):>9} "
                    f"{_share(ended.get(2.0, 0.0), samples):>9} {running:7.0f}")
    if not rows:
        return []
    return ["", f"{'tail (sampled t/o)':<20} {'samples':>8} {'t/o +50%':>9} {'t/o +100%':>9} "
                f"{'running':>7}", *rows]


def render(window: Window, source: str) -> str:
    """The dashboard as plain text."""
    w, now = window, window.after
    codes = w.rates_by("txfanout_requests_total", "code")
    lines = [
        f"txfanout top  {source}  {time.strftime('%H:%M:%S', time.localtime(now.at))}"
        f"  (last {w.seconds:.1f} s)",
        f"requests  {w.rate('txfanout_requests_total'):9.1f}/s   in flight "
        f"{now.total('txfanout_inflight_requests'):.0f}   waiting "
        f"{now.total('txfanout_queued_requests'):.0f}   overdue "
        f"{now.total('txfanout_overdue_inflight'):.0f}   shed "
        f"{w.rate('txfanout_shed_total'):.1f}/s "
        + " ".join(f"({r} {v:.1f}/s)"
                   for r, v in sorted(w.rates_by('txfanout_shed_total', 'reason').items())
                   if v > 0),
        "codes     " + ("  ".join(f"{c} {v:.1f}/s" for c, v in sorted(codes.items()) if v > 0)
                        or "-"),
        f"latency   p50 {_q_ms(w.quantile(0.5, 'txfanout_request_duration_seconds'))} ms"
        f"   p99 {_q_ms(w.quantile(0.99, 'txfanout_request_duration_seconds'))} ms",
        f"process   RSS {_mib(now.total('process_resident_memory_bytes'))}   CPU "
        f"{100.0 * w.rate('process_cpu_seconds_total'):.0f}%   fds "
        f"{now.total('process_open_fds'):.0f}   reactor lag "
        f"{_ms(now.total('txfanout_reactor_lag_seconds'))} ms   gc "
        f"{w.rate('python_gc_collections_total'):.1f}/s   clients "
        f"{now.total('txfanout_client_connections'):.0f} "
        f"({now.total('txfanout_client_connections_held'):.0f} held)",
        "",
        f"{'partner':<20} {'calls/s':>9} {'ok':>7} {'http_err':>8} {'timeout':>7} "
        f"{'error':>7} {'abandon':>7} {'limited':>7} {'other':>7} {'p99 ms':>8} {'t/o ms':>7} "
        f"{'in-flt':>6} {'breaker':>7} "
        f"{'conns idle/active':>17}",
    ]
    upstream_of = {d["partner"]: d["upstream"]
                   for d, _ in now.values("txfanout_partner_upstream")}
    conns = {(d["upstream"], d["state"]): v
             for d, v in now.values("txfanout_upstream_connections")}
    partners = sorted(now.by("txfanout_partner_inflight", "partner"))
    for p in partners:
        outcomes = w.rates_by("txfanout_partner_calls_total", "outcome", partner=p)
        calls = sum(outcomes.values())
        other = calls - sum(outcomes.get(o, 0.0) for o in _OUTCOMES)
        up = upstream_of.get(p, "")
        breaker = "OPEN" if now.total("txfanout_partner_circuit_open", partner=p) else "closed"
        lines.append(
            f"{p[:20]:<20} {calls:9.1f} "
            + " ".join(f"{_share(outcomes.get(o, 0.0), calls):>{n}}"
                       for o, n in zip(_OUTCOMES, (7, 8, 7, 7, 7, 7)))
            + f" {_share(other, calls):>7}"
            f" {_q_ms(w.quantile(0.99, 'txfanout_partner_call_duration_seconds', partner=p)):>8}"
            f" {_timeout_ms(now, p):>7}"
            f" {now.total('txfanout_partner_inflight', partner=p):6.0f} {breaker:>7}"
            f" {conns.get((up, 'idle'), 0):>8.0f}/{conns.get((up, 'active'), 0):<8.0f}")
    lines += _tail_table(w, partners)
    upstreams = sorted({u for u, _ in conns})
    if upstreams:
        lines += ["", f"{'upstream':<40} {'idle':>6} {'active':>6} {'opened/s':>9}"]
        for u in upstreams:
            lines.append(f"{u[:40]:<40} {conns.get((u, 'idle'), 0):6.0f} "
                         f"{conns.get((u, 'active'), 0):6.0f} "
                         f"{w.rate('txfanout_upstream_connections_opened_total', upstream=u):9.1f}")
    return "\n".join(lines) + "\n"


class Unauthorized(Exception):
    """The admin face wants a token (401), or refused the one given (403)."""


def fetch(admin: str, token: str | None = None, timeout: float = 5.0) -> Scrape:
    """Read and parse ``admin``/metrics, with ``token`` as a bearer token."""
    request = urllib.request.Request(admin.rstrip("/") + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read(64 * 1024 * 1024).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise Unauthorized("the token was refused" if token else
                               "it needs the admin token (server.admin_token): give "
                               f"--token or set {TOKEN_VARIABLE}") from None
        raise
    return Scrape.parse(text, time.time())


def sleep(seconds: float) -> bool:
    """Wait ``seconds``; never asked to quit (no keyboard to read)."""
    time.sleep(seconds)
    return False


class Keys:
    """Single key presses on a terminal (no echo, no Enter needed) while
    open; ``wait`` returns True as soon as ``q`` is pressed. Ctrl-C still
    interrupts (KeyboardInterrupt). The terminal is restored on close."""

    QUIT = (b"q", b"Q")

    def __init__(self, fd: int) -> None:
        import termios
        import tty

        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)

    def wait(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([self._fd], [], [], left)
            if readable:
                key = os.read(self._fd, 1)
                if key in self.QUIT:
                    return True
                if not key:  # the terminal went away: no more keys
                    return sleep(max(0.0, end - time.monotonic()))

    def close(self) -> None:
        import termios

        # At once, not after the output drains: a terminal that stopped
        # reading (Ctrl-S) would keep the quit waiting.
        termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)


def run(admin: str, interval: float, once: bool, out: TextIO,
        wait: Callable[[float], bool] = sleep, token: str | None = None,
        at_least: str = "≥") -> int:
    """Show the dashboard on ``out`` until ``wait`` says quit or Ctrl-C (or
    once)."""
    if "://" not in admin:
        admin = "http://" + admin
    try:
        before = fetch(admin, token)
        while True:
            if wait(interval):
                return 0
            after = fetch(admin, token)
            text = render(Window(before, after), admin).replace("≥", at_least)
            out.write(text if once else _CLEAR + text)
            out.flush()
            if once:
                return 0
            before = after
    except Unauthorized as e:
        print(f"top: cannot read {admin}/metrics: {e}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        print(f"top: cannot read {admin}/metrics: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    top = commands.add_parser(
        "top", help="live view of a running gateway (from its admin face)",
        description="A live view of a running gateway, read from its admin face's "
                    "/metrics. Press q (or Ctrl-C) to quit.")
    top.add_argument("--admin", default=DEFAULT_ADMIN,
                     help=f"the admin face's URL (default {DEFAULT_ADMIN})")
    top.add_argument("--token", default=None,
                     help="the admin token (server.admin_token), when the admin face has "
                          f"one; default: the environment variable {TOKEN_VARIABLE}")
    top.add_argument("--interval", type=float, default=1.0,
                     help="seconds between refreshes (default 1)")
    top.add_argument("--once", action="store_true",
                     help="print one view and exit (the default when not on a TTY)")


def _encodes(stream: TextIO, text: str) -> bool:
    try:
        text.encode(stream.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def main(args: argparse.Namespace) -> int:
    if not 0.05 <= args.interval <= 3600:
        print("top: --interval must be from 0.05 to 3600 seconds", file=sys.stderr)
        return 2
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    once = args.once or not sys.stdout.isatty()
    at_least = "≥" if _encodes(sys.stdout, "≥") else ">="
    keys = Keys(sys.stdin.fileno()) if not once and sys.stdin.isatty() else None
    try:
        return run(args.admin, args.interval, once, sys.stdout,
                   keys.wait if keys else sleep, token, at_least)
    finally:
        if keys is not None:
            keys.close()
