"""The gateways' own counters, read right before and right after a load window.

Neither ab nor h2load can see a response header, so they cannot tell a
complete answer (every partner answered) from an incomplete one; the
gateways can. Each gateway keeps counters since its start, and the harness
takes their difference over the load window:

- txfanout: its admin ``/metrics``: ``txfanout_answers_total{route,complete}``
  (answers by completeness; the complete ones are the count used),
  ``txfanout_requests_total{route,code}`` (its ``code="200"`` is the count of
  200 answers: ``answers_total`` also counts, as incomplete, fan-outs whose
  client hung up and got no answer, ``code="499"``),
  ``txfanout_shed_total{reason}`` and the ``txfanout_request_duration_seconds``
  histogram of the route (time from a request's first byte to its answer);
  on PyPy ``txfanout_pypy_gc_seconds_total``, its collector's time.
  With ``--workers N``, worker I's admin face is on the admin port + I; the
  workers' counters are summed.
- the references (``bench/ref_*.py``, ``bench/ref_go``): ``GET /stats`` on their
  public port, ``{"answers": N, "complete": M}`` (200 answers written to a
  client still connected; complete: every partner ``ok``, as the answer's
  ``X-Fanout-Complete`` header says).

A scrape that fails gives ``None``; the harness then falls back to the bound
nginx gives (complete answers/s <= requests nginx served / fan-out).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

ROUTE = "bid"  # the route every gateway is driven on (gateways.py)

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text exposition: (name, labels, value)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), labels, value))
    return out


@dataclass
class Counters:
    """One reading of a gateway's counters (totals since it started)."""

    t: float  # time.monotonic() when the reading was taken
    answers: int  # 200 answers
    complete: int  # of which complete
    source: str  # "metrics" (txfanout) or "stats" (references)
    answers_metric: int = 0  # txfanout: txfanout_answers_total, both labels
    codes: dict[str, int] = field(default_factory=dict)  # txfanout: answers by HTTP code
    shed: dict[str, int] = field(default_factory=dict)  # txfanout: refusals by reason
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative)
    gc_s: float | None = None  # txfanout on PyPy: its collector's seconds


def from_metrics(texts: list[str], t: float) -> Counters:
    """Counters of txfanout from one or more /metrics texts (summed)."""
    c = Counters(t=t, answers=0, complete=0, source="metrics")
    buckets: dict[float, float] = {}
    for text in texts:
        for name, labels, value in parse_prometheus(text):
            if name == "txfanout_answers_total" and labels.get("route") == ROUTE:
                c.answers_metric += int(value)
                if labels.get("complete") == "true":
                    c.complete += int(value)
            elif name == "txfanout_requests_total" and labels.get("route") == ROUTE:
                code = labels.get("code", "?")
                c.codes[code] = c.codes.get(code, 0) + int(value)
                if code == "200":
                    c.answers += int(value)
            elif name == "txfanout_shed_total":
                reason = labels.get("reason", "?")
                c.shed[reason] = c.shed.get(reason, 0) + int(value)
            elif (name == "txfanout_request_duration_seconds_bucket"
                  and labels.get("route") == ROUTE):
                le = math.inf if labels.get("le") in ("+Inf", "Inf") else float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
            elif name == "txfanout_pypy_gc_seconds_total":
                c.gc_s = (c.gc_s or 0.0) + value
    c.buckets = sorted(buckets.items())
    return c


def _get(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode("utf-8")


def read(urls: list[str], kind: str, attempts: int = 3, timeout_s: float = 5.0) -> Counters | None:
    """Read the counters at ``urls`` (``kind``: "metrics" or "stats"); None
    when a scrape fails ``attempts`` times (a gateway still busy with a
    backlog after an overload gets a few tries)."""
    for attempt in range(attempts):
        try:
            t = time.monotonic()
            texts = [_get(u, timeout_s) for u in urls]
            if kind == "metrics":
                return from_metrics(texts, t)
            d = json.loads(texts[0])
            return Counters(t=t, answers=int(d["answers"]), complete=int(d["complete"]),
                            source="stats")
        except (OSError, ValueError, KeyError):
            if attempt + 1 < attempts:
                time.sleep(0.5)
    return None


def histogram_quantile(q: float, buckets: list[tuple[float, float]],
                       rank: float | None = None) -> float | None:
    """The ``q`` quantile (or the observation of the given ``rank``) of a
    cumulative histogram, interpolated linearly inside its bucket as
    Prometheus' histogram_quantile does; ``inf`` when it falls in the +Inf
    bucket. None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    want = q * total if rank is None else rank
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= want and cum > below:
            if math.isinf(le):
                return math.inf
            return lower + (le - lower) * (want - below) / (cum - below)
        lower, below = le, cum
    return lower


def delta(before: Counters | None, after: Counters | None) -> dict[str, Any] | None:
    """What happened between two readings: answers, complete, and for
    txfanout the answers by code, refusals by reason and the histogram."""
    if before is None or after is None:
        return None
    d: dict[str, Any] = {
        "source": after.source, "window_s": round(after.t - before.t, 3),
        "answers": after.answers - before.answers,
        "complete": after.complete - before.complete,
    }
    if after.source == "metrics":
        d["answers_metric"] = after.answers_metric - before.answers_metric
        d["codes"] = {k: v - before.codes.get(k, 0) for k, v in sorted(after.codes.items())
                      if v - before.codes.get(k, 0)}
        d["shed"] = {k: v - before.shed.get(k, 0) for k, v in sorted(after.shed.items())
                     if v - before.shed.get(k, 0)}
        old = dict(before.buckets)
        d["buckets"] = [(le, cum - old.get(le, 0.0)) for le, cum in after.buckets]
        if before.gc_s is not None and after.gc_s is not None:
            d["gc_s"] = round(after.gc_s - before.gc_s, 4)
    return d


def gateway_latency(d: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """Gateway-side latency over the window from txfanout's histogram delta
    (time from a request's first byte to its answer: the accept queue is not
    in it), in ms:

    - ``gw_p99_ms``: p99 of every answer on the route (200s, 503s, 499s...);
      refusals at arrival are observed as 0 s, so many 503s pull it down.
      Past the histogram's last finite bucket (5 s): None, and
      ``gw_p99_over_ms`` says the bound.
    - ``gw_p99_200_ms``: p99 of the 200s, estimated by taking the slowest
      1% of the 200s to be the slowest observations of the histogram (true
      when refusals are faster than answers, as they are meant to be).
    - ``gw_200_within_deadline``: share of the 200s answered within
      ``deadline_s``, a lower bound by the same reasoning (the deadline is
      a bucket bound, so nothing is interpolated).
    """
    buckets = d.get("buckets") or []
    out: dict[str, Any] = {}
    if not buckets or buckets[-1][1] <= 0:
        return out
    total = buckets[-1][1]

    top = max((le for le, _ in buckets if not math.isinf(le)), default=0.0)

    def put(key: str, v: float | None) -> None:
        # past the last finite bucket: None, and the bound it is beyond
        if v is not None and math.isinf(v):
            out[key], out[key.replace("_ms", "_over_ms")] = None, round(top * 1000.0, 1)
        else:
            out[key] = None if v is None else round(v * 1000.0, 1)

    put("gw_p99_ms", histogram_quantile(0.99, buckets))
    n200 = d.get("codes", {}).get("200", 0)
    if n200 > 0:
        put("gw_p99_200_ms", histogram_quantile(0.99, buckets, rank=total - 0.01 * n200))
        within = [cum for le, cum in buckets if abs(le - deadline_s) < 1e-9]
        if within:
            late = total - within[0]
            out["gw_200_within_deadline"] = round(max(0.0, 1.0 - late / n200), 4)
    return out
