"""Scenarios: which gateways, which fan-outs, which load, what extra to report.

Every row is measured the same way (:func:`measure`): start the gateway
(pinned to the gateway CPU), warm it up, take marks (CPU, nginx counters),
run the load (pinned to the load CPU), take marks again, wait for RSS to
settle, stop the gateway.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from . import counters, gateways, loadgen
from .gateways import Running, Setup
from .loadgen import LoadResult
from .nginx import Nginx
from .procs import (Registry, Sampler, cpu_seconds, host_busy_seconds, own_and_children_cpu,
                    process_tree, running_children_cpu, wait_for_quiet)

SCENARIOS = ("steady", "seed", "overload", "polite", "burst", "slow", "slowpartner", "soak",
             "workers")
DEFAULT_DURATION = {"steady": 15, "seed": 15, "overload": 15, "polite": 15, "burst": 15,
                    "slow": 15, "slowpartner": 15, "soak": 120, "workers": 15}
# scenarios whose settings only txfanout has
TXFANOUT_ONLY = ("slowpartner", "workers")
# load generators each scenario uses (wrk is always used to warm up)
TOOLS = {"steady": {"wrk"}, "seed": {"wrk", "ab", "h2load"}, "overload": {"wrk", "h2load"},
         "polite": {"wrk"}, "burst": {"wrk", "h2load"},
         "slow": {"wrk"}, "slowpartner": {"wrk"}, "soak": {"wrk", "h2load"}, "workers": {"wrk"}}


@dataclass
class Context:
    """What every scenario needs from the run."""

    registry: Registry
    nginx: Nginx
    workdir: str
    logdir: str
    body_path: str
    lua_path: str
    gateways: list[str]
    fanouts: list[int]
    duration: float
    warmup: float
    settle: float
    connections: int
    gw_cpu: int | None
    load_cpu: int | None
    quick: bool
    wait_idle: float = 30.0
    lead_in: float = 0.0  # seconds of a many-clients row's own load before it is measured
    repeat: int = 1
    clients: int | None = None  # overload: h2load clients
    max_inflight: int | None = None  # txfanout's cap, when not the scenario's own
    workers: int = 1  # soak: txfanout's --workers
    shapes: list[str] = field(default_factory=lambda: list(SEED_SHAPES.values()))  # seed
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    progress: Callable[[str], None] = print

    def order(self) -> list[str]:
        """The gateways of one group, round-robin ``repeat`` times, so that a
        noisy spell hits every gateway alike."""
        return list(self.gateways) * self.repeat


def _log_errors(path: str | None) -> int:
    """Tracebacks / unhandled errors the gateway logged."""
    if not path or not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return len(re.findall(r"Traceback \(most recent call last\)|Unhandled error", text))


_SAMPLE = re.compile(r'^txfanout_(partner_calls|shed)_total\{[^}]*?\b(?:outcome|reason)="([a-z_]+)"'
                     r'[^}]*\} ([0-9.e+]+)$', re.M)
_ABANDONED = re.compile(r'^txfanout_(abandoned_in_backlog|queued)_total ([0-9.e+]+)$', re.M)


def scrape_outcomes(url: str, path: str) -> dict[str, int]:
    """Save txfanout's /metrics to ``path``; return its partner calls by
    outcome (summed over partners), its refusals as ``shed:<reason>``, the
    connections closed at accept as ``abandoned_in_backlog`` and the
    requests that waited for a slot as ``queued``."""
    try:
        with urllib.request.urlopen(url, timeout=5.0) as r:
            text = r.read().decode("utf-8")
    except OSError:
        return {"scrape failed": 1}
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    out: dict[str, int] = {}
    for family, key, value in _SAMPLE.findall(text):
        key = key if family == "partner_calls" else f"shed:{key}"
        out[key] = out.get(key, 0) + int(float(value))
    for key, value in _ABANDONED.findall(text):
        out[key] = int(float(value))
    return {k: v for k, v in out.items() if v}


# issue 18 item 4's histogram of the real finish times of sampled
# timed-out calls: its name is not final, so any family starting so
TAIL_FAMILY = "txfanout_partner_tail_ratio"  # latency / timeout_ms, per partner
_BUCKET = re.compile(r'^(\w+)_bucket\{([^}]*)\} (\S+)$', re.M)


def tail_histograms(path: str | None) -> dict[str, dict[str, list[tuple[str, int]]]]:
    """From the /metrics saved at ``path``: per ``TAIL_FAMILY*`` histogram
    and partner, its buckets as (le, cumulative count), since the gateway
    started (warm-up included)."""
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out: dict[str, dict[str, list[tuple[str, int]]]] = {}
    for family, labels, value in _BUCKET.findall(text):
        if family.startswith(TAIL_FAMILY):
            lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            out.setdefault(family, {}).setdefault(lab.get("partner", "?"), []).append(
                (lab.get("le", "?"), int(float(value))))
    return out


def process_rss(by_pid: list[tuple[float, dict[int, int]]], t0: float,
                t1: float) -> dict[str, dict[str, Any]]:
    """Each process's RSS (MB) from ``Sampler.by_pid``: once sampled first
    (the gateway ready), at the load's start ``t0`` and end ``t1``, its
    peak, and its range over the second half of the load (a process that
    levels off keeps that range narrow)."""
    def mb(kb: int) -> float:
        return round(kb / 1024, 1)

    out: dict[str, dict[str, Any]] = {}
    for pid in sorted({pid for _, rss in by_pid for pid in rss}):
        seen = [(t, rss[pid]) for t, rss in by_pid if pid in rss]
        load = [(t, kb) for t, kb in seen if t0 <= t <= t1]
        half = [kb for t, kb in load if t >= (t0 + t1) / 2]
        if not half:  # gone before the load's second half
            continue
        out[str(pid)] = {"ready": mb(seen[0][1]), "load_start": mb(load[0][1]),
                         "end": mb(load[-1][1]), "peak": mb(max(kb for _, kb in seen)),
                         "last_half": [mb(min(half)), mb(max(half))]}
    return out


def rss_slope_kib_per_min(samples: list[tuple[float, int, float]], t0: float,
                          t1: float) -> float | None:
    """Least-squares slope of RSS over [t0, t1], KiB per minute."""
    pts = [(t, r) for t, r, _ in samples if t0 <= t <= t1]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mr = sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return None
    cov = sum((t - mt) * (r - mr) for t, r in pts)
    return round(cov / var * 60.0, 1)


def _started(load: Callable[[Running], LoadResult], g: Running) -> Future[LoadResult]:
    """``load(g)`` started in a thread of its own."""
    pool = ThreadPoolExecutor(1)
    running = pool.submit(load, g)
    pool.shutdown(wait=False)  # its thread ends with the load
    return running


def measure(ctx: Context, scenario: str, name: str, setup: Setup,
            load: Callable[[Running], LoadResult], label: str = "",
            gw_cpu: int | str | None = "default",
            prepare: Callable[[Running], None] | None = None,
            lead_s: float = 0.0) -> dict[str, Any]:
    """Run one row: gateway ``name`` under ``load``; return the row.
    ``prepare`` runs after the warm-up, outside the measured window; so do
    the first ``lead_s`` seconds of ``load`` itself (one that measures only
    after as long, such as h2load's ``--warm-up-time``)."""
    cpu = ctx.gw_cpu if gw_cpu == "default" else gw_cpu
    tag = f"{scenario}-{name}-fo{setup.fanout}{('-' + label.replace(' ', '-')) if label else ''}"
    if ctx.repeat > 1:
        done = sum(1 for r in ctx.rows if (r["scenario"], r["gateway"], r["fanout"], r["label"])
                   == (scenario, name, setup.fanout, label))
        tag += f"-run{done + 1}"
    idle_before = wait_for_quiet(ctx.wait_idle) if ctx.wait_idle > 0 else None
    if idle_before is not None and idle_before >= 0.25:
        ctx.progress(f"  {tag}: machine busy before the row ({idle_before:.2f} CPUs in use "
                     f"by others after waiting {ctx.wait_idle:.0f} s); going on")
    ctx.progress(f"  {tag}: starting")
    g = gateways.start(ctx.registry, name, setup, ctx.workdir, ctx.logdir, cpu, tag)
    sampler = Sampler(g.child.pid, 0.5).start()
    try:
        if ctx.warmup > 0:
            loadgen.wrk(ctx.registry, g.url, ctx.lua_path, min(ctx.connections, 64),
                        ctx.warmup, ctx.load_cpu, os.path.join(ctx.logdir, f"{tag}.load.log"))
        if prepare is not None:
            prepare(g)
        opening = counters.read(*g.counters) if lead_s else None
        running = _started(load, g) if lead_s else None
        time.sleep(lead_s)
        before = ctx.nginx.status()
        mark = ctx.nginx.access_log_mark() if ctx.nginx.access_log else 0
        ngx_pids = process_tree(ctx.nginx.child.pid)
        host0, ngx0, (me0, kids0) = host_busy_seconds(), cpu_seconds(ngx_pids), own_and_children_cpu()
        kids0 += running_children_cpu(ctx.registry, g.child, ctx.nginx.child)  # a load's lead-in
        # the gateway's own counters, right before and right after the load
        c0 = counters.read(*g.counters)
        t0, rss0, cpu0 = sampler.sample()
        result = running.result() if running is not None else load(g)
        t1, _, cpu1 = sampler.sample()
        c1 = counters.read(*g.counters)
        host1, ngx1, (me1, kids1) = host_busy_seconds(), cpu_seconds(ngx_pids), own_and_children_cpu()
        after = ctx.nginx.status()
        time.sleep(1.2 if ctx.nginx.access_log else 0)  # access log flush=1s
        log_stats = ctx.nginx.access_log_stats(mark) if ctx.nginx.access_log else {}
        time.sleep(ctx.settle)
        _, settled, _ = sampler.sample()
        scraped = name == gateways.TXFANOUT and setup.workers == 1
        metrics_file = os.path.join(ctx.logdir, f"{tag}.metrics") if scraped else None
        outcomes = (scrape_outcomes(g.ready_url.replace("/readyz", "/metrics"), metrics_file)
                    if metrics_file else {})
    finally:
        sampler.stop()
        code = ctx.registry.stop(g.child)
    window = max(t1 - t0, 1e-9)
    # CPU used on this machine during the window by anything we did not start
    others = (host1 - host0) - (cpu1 - cpu0) - (ngx1 - ngx0) - (me1 - me0) - (kids1 - kids0)
    answered = max(result.requests, 1)
    row: dict[str, Any] = {
        "scenario": scenario, "gateway": name, "fanout": setup.fanout, "label": label,
        "workers": setup.workers, "max_inflight": setup.max_inflight,
        "timeout_ms": setup.timeout_ms, "deadline_ms": setup.deadline_ms,
        "tool": result.tool, "load": result.to_json(), "outcomes": outcomes,
        "metrics_file": metrics_file,
        "requests": result.requests, "rps": result.rps,
        "p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "p99_ms": result.p99_ms,
        "max_ms": result.max_ms, "statuses": result.statuses,
        "non2xx": {k: v for k, v in result.statuses.items() if not k.startswith("2")},
        "socket_errors": result.socket_errors,
        "errors": result.non2xx + sum(result.socket_errors.values()),
        "goodput_rps": round(result.ok / result.duration_s, 1) if result.duration_s else 0.0,
        "cpu_s": round(cpu1 - cpu0, 2),
        "cpu_s_per_1k": round((cpu1 - cpu0) / answered * 1000.0, 3),
        "gateway_cpu_util": round((cpu1 - cpu0) / window, 2),
        "nginx_cpu_util": round((ngx1 - ngx0) / window, 2),
        "loadgen_cpu_util": round((kids1 - kids0) / window, 2),
        "other_cpu_util": round(max(0.0, others) / window, 2),
        "others_before_row": None if idle_before is None else round(idle_before, 2),
        "start_rss_mb": round(rss0 / 1024, 1),
        "peak_rss_mb": round(sampler.peak_rss_kb(0, t1 + 0.5) / 1024, 1),
        "settled_rss_mb": round(settled / 1024, 1),
        "rss_slope_kib_per_min": rss_slope_kib_per_min(sampler.samples, t0, t1),
        "rss_timeline": [(round(t, 2), round(r / 1024, 1)) for t, r, _ in sampler.samples],
        # with --workers, each process (the parent and every worker) on its own
        "process_rss_mb": process_rss(sampler.by_pid, t0, t1) if setup.workers > 1 else None,
        "load_window": [round(t0, 2), round(t1, 2)],
        # the second stub_status poll's own connection/request is in ``after``
        "upstream_conns_new": after["accepts"] - before["accepts"] - 1,
        "upstream_conns_per_s": round((after["accepts"] - before["accepts"] - 1) / window, 1),
        "upstream_rps": round((after["requests"] - before["requests"] - 1) / window, 1),
        "partner_timeouts": result.partner_timeouts,
        "incomplete": result.incomplete,
        "nginx_log": log_stats,
        "gateway_log_errors": _log_errors(g.child.log_path),
        "gateway_exit": code, "gateway_log": g.child.log_path,
    }
    d = counters.delta(c0, c1)
    completeness(row, result, d, setup, window)
    d_opening = counters.delta(opening, c0)
    if d_opening is not None:  # what its clients got while they connected
        row["opening_complete_rps"] = round(d_opening["complete"] / d_opening["window_s"], 1)
    if d is not None and "gc_s" in d:  # the CPU s/1k req of PyPy's collector
        row["gc_s_per_1k"] = round(d["gc_s"] / answered * 1000.0, 3)
    if result.partner_timeouts is not None:
        row["cancellations_per_s"] = round(result.partner_timeouts / result.duration_s, 1) \
            if result.duration_s else 0.0
    ctx.progress(f"  {tag}: {result.rps:.0f} req/s, p99 {result.p99_ms} ms, "
                 f"non-2xx {row['non2xx'] or 0}, socket errors {result.socket_errors or 0}")
    ctx.rows.append(row)
    return row


def completeness(row: dict[str, Any], result: LoadResult, d: dict[str, Any] | None,
                 setup: Setup, window: float) -> None:
    """Complete answers/s (every partner answered), 503s/s and the p99 of
    the 200s and of the 503s, into ``row``.

    Complete answers come from the gateway's counters over the load window
    (source "counters", any load generator): the share of its 200 answers
    that were complete (``complete_share``), applied to the 200s/s the
    client received. When the gateway and the client counted the same 200s
    (ab, which waits for every answer) that is exactly complete answers
    counted / duration; a load generator that stops at the end of its
    duration leaves answers unread that the gateway counted
    (``answers_vs_client`` > 1), and the share keeps those out. When a
    scrape failed: wrk's count of ``X-Fanout-Complete: false`` (source
    "wrk"); else only bounded by what nginx served (source "nginx bound":
    complete/s <= nginx requests/s / fan-out)."""
    duration = result.duration_s or window
    row["counters"] = d
    if d is not None:
        row["complete_rps_source"] = "counters"
        row["answers_counted"] = d["answers"]
        row["complete_counted"] = d["complete"]
        # the gateway's CPU per complete answer: what a storm's refusals,
        # holds and connections add to each answer that counts
        row["cpu_ms_per_complete"] = (round(1000 * row["cpu_s"] / d["complete"], 3)
                                      if d["complete"] else None)
        # (txfanout: a complete answer whose client hung up as it was sent
        # counts as complete and as a 499, hence the cap)
        share = min(1.0, d["complete"] / d["answers"]) if d["answers"] else None
        row["complete_share"] = round(share, 4) if share is not None else None
        row["complete_rps"] = round(row["goodput_rps"] * share, 1) if share is not None else 0.0
        row["answers_vs_client"] = round(d["answers"] / result.ok, 3) if result.ok else None
        if d["source"] == "metrics":
            row["gw_codes"] = d.get("codes", {})
            row["gw_shed"] = d.get("shed", {})
            row.update(counters.gateway_latency(d, setup.deadline_ms / 1000.0))
        if result.incomplete is not None:
            row["complete_wrk"] = max(0, result.ok - result.incomplete)
    elif result.incomplete is not None and duration:
        row["complete_rps"] = round(max(0, result.ok - result.incomplete) / duration, 1)
        row["complete_rps_source"] = "wrk"
        row["complete_share"] = (round(1 - result.incomplete / result.ok, 4) if result.ok
                                 else None)
    else:
        row["complete_rps"] = round(min(row["goodput_rps"], row["upstream_rps"] / setup.fanout), 1)
        row["complete_rps_source"] = "nginx bound"
        row["complete_share"] = None
    # 503s/s as the client counted them; ab does not say which non-2xx it
    # got: its non-2xx count, called 503s when txfanout's counters say every
    # non-200 it sent was a 503 (or a 499, which no client receives). The
    # gateway's own count is kept too: it can be a little higher (ab sends
    # again a request refused while it was still sending; a refusal held by
    # pacing can be written after the load generator left).
    if duration:
        if result.tool != "ab":
            row["rps_503"] = round(result.statuses.get("503", 0) / duration, 1)
            row["rps_503_source"] = result.tool
        else:
            row["rps_503"] = round(result.non2xx / duration, 1)
            codes = set((d or {}).get("codes", {})) - {"200", "499"}
            all_503 = d is not None and d["source"] == "metrics" and codes <= {"503"}
            row["rps_503_source"] = "ab non-2xx, 503 per gateway" if all_503 else "ab non-2xx"
        if d is not None and d["source"] == "metrics":
            row["gw_rps_503"] = round(d.get("codes", {}).get("503", 0) / duration, 1)
    # p99 of the 200s and of the 503s: per status from h2load's log; from
    # wrk or ab only when every answer was a 2xx (they give no breakdown)
    if result.by_status:
        row["p99_200_ms"] = result.by_status.get("200", {}).get("p99_ms")
        row["p99_200_settled_ms"] = result.p99_200_settled_ms
        refused = result.by_status.get("503", {})
        row["p99_503_ms"] = refused.get("p99_ms")
        row["p50_503_ms"] = refused.get("p50_ms")
    else:
        clean = result.non2xx == 0 and not result.socket_errors
        row["p99_200_ms"] = result.p99_ms if clean else None
        row["p99_503_ms"] = None


def _wrk_load(ctx: Context, connections: int, duration: float, tag: str) -> Callable[[Running], LoadResult]:
    def run(g: Running) -> LoadResult:
        return loadgen.wrk(ctx.registry, g.url, ctx.lua_path, connections, duration,
                           ctx.load_cpu, os.path.join(ctx.logdir, f"{tag}.load.log"))
    return run


def steady(ctx: Context) -> None:
    """Closed loop, wrk c=64, fan-out 1, 2 and 8."""
    for fo in ctx.fanouts:
        for name in ctx.order():
            setup = Setup(fanout=fo, partner_url=ctx.nginx.base_url + "/bid{i}")
            measure(ctx, "steady", name, setup,
                    _wrk_load(ctx, ctx.connections, ctx.duration, f"steady-{name}-fo{fo}"))


def _setup(ctx: Context, fo: int, name: str, default_cap: int) -> Setup:
    """Fan-out ``fo`` to nginx; txfanout at --max-inflight, else at the
    scenario's ``default_cap``; the references with no cap to speak of."""
    cap = (ctx.max_inflight or default_cap) if name == gateways.TXFANOUT else 2000
    return Setup(fanout=fo, partner_url=ctx.nginx.base_url + "/bid{i}", max_inflight=cap)


def _fanouts(ctx: Context) -> list[int]:
    """The scenario's fan-outs: 2 unless --fanouts says otherwise."""
    return ctx.fanouts if ctx.fanouts != [1, 2, 8] else [2]


SHAPE_NEW_CONN = "new connection per request"
SHAPE_KEEPALIVE = "keep-alive"
SEED_SHAPES = {"ab": SHAPE_NEW_CONN, "keep-alive": SHAPE_KEEPALIVE}  # --shapes
OPENED_LEAST_S = 2.0  # the least a keep-alive row's connections are open first (quick: 1)


def _opened_s(ctx: Context, lead_in: bool) -> float:
    """How long a keep-alive row's connections are open before its window:
    at least OPENED_LEAST_S, and with ``lead_in`` at least --lead-in."""
    least = 1.0 if ctx.quick else OPENED_LEAST_S
    return max(ctx.lead_in, least) if lead_in else least


def seed_sizes(ctx: Context) -> dict[str, Any]:
    """Clients and sizes of the seed rows: 2,500 clients (or --clients)
    against 64 (--connections); ab -n 50000; --quick: 200 against 16, -n
    2000."""
    many = ctx.clients or (200 if ctx.quick else 2500)
    few = 16 if ctx.quick else ctx.connections
    # ab refuses a concurrency above -n
    return {"many": many, "few": few, "n": max(many, 2000 if ctx.quick else 50000),
            "ab_few_max_s": 10 if ctx.quick else 120}


def seed(ctx: Context) -> None:
    """The seed's load in the two shapes its issue asks about, fan-out 2,
    each at 2,500 clients and at 64 against the same gateway in the same
    run, so that complete answers/s at 2,500 can be quoted as a share of
    those at 64:

    - new connection per request: ``ab -n 50000 -c 2500`` as the seed ran
      it, then ``ab -c 64`` for as long as that took (``-t``);
    - keep-alive: ``h2load --h1`` with 2,500 clients for ``--duration``
      (default 15 s), then with 64, each measured on connections its
      clients opened before the window (h2load's ``--warm-up-time``): 2,500
      connections opened in the same instant, their first requests queued
      in the backlog together, are a connection storm, not the steady load
      of 2,500 keep-alive clients: on PyPy its first 2 s cost a 15 s
      window up to a tenth of its complete answers (bench/RESULTS.md,
      fifteenth sitting).

    A 2,500-client row comes after ``--lead-in`` seconds of its own load
    on its gateway (keep-alive: on the same connections; the 64-client row
    after the warm-up, wrk at 64).
    """
    z = seed_sizes(ctx)
    many, few = z["many"], z["few"]

    def timed(g: Running, clients: int, seconds: float, log_path: str,
              shape: str, opened_s: float = 0.0) -> LoadResult:
        """``clients`` of ``shape`` for ``seconds`` (keep-alive: after
        ``opened_s`` on the same connections)."""
        if shape == SHAPE_KEEPALIVE:
            return loadgen.h2load(ctx.registry, g.url, ctx.body_path, clients, seconds,
                                  ctx.load_cpu, ctx.workdir, warmup_s=opened_s,
                                  log_path=log_path, name=os.path.basename(log_path)[:-9])
        return loadgen.ab(ctx.registry, g.url, ctx.body_path, 1_000_000, clients,
                          ctx.load_cpu, log_path, time_limit_s=seconds)

    for fo in _fanouts(ctx):
        for shape in ctx.shapes:
            for name in ctx.order():
                setup = _setup(ctx, fo, name, 2000)
                took: dict[str, float] = {}
                for clients in (many, few):
                    label = f"{'ab' if shape == SHAPE_NEW_CONN else 'h2load'} c{clients}"
                    log_path = os.path.join(ctx.logdir, f"seed-{name}-fo{fo}-"
                                            f"{label.replace(' ', '-')}.load.log")
                    opened_s = 0.0 if shape == SHAPE_NEW_CONN else _opened_s(ctx, clients == many)

                    def run(g: Running, clients: int = clients, log_path: str = log_path,
                            shape: str = shape, opened_s: float = opened_s) -> LoadResult:
                        if shape == SHAPE_NEW_CONN and clients == many:
                            return loadgen.ab(ctx.registry, g.url, ctx.body_path, z["n"],
                                              clients, ctx.load_cpu, log_path)
                        # ab: as long as the many-clients row took (it is sized by -n)
                        seconds = ctx.duration if shape == SHAPE_KEEPALIVE else min(
                            z["ab_few_max_s"], max(2.0, took.get("s", ctx.duration)))
                        return timed(g, clients, seconds, log_path, shape, opened_s)

                    def lead_in(g: Running, clients: int = clients, log_path: str = log_path,
                                shape: str = shape) -> None:
                        timed(g, clients, ctx.lead_in,
                              log_path.replace(".load.log", ".lead-in.load.log"), shape)
                    separate_lead_in = (clients == many and ctx.lead_in
                                        and shape == SHAPE_NEW_CONN)
                    row = measure(ctx, "seed", name, setup, run, label=label,
                                  prepare=lead_in if separate_lead_in else None,
                                  lead_s=opened_s)
                    row.update(shape=shape, clients=clients, opened_s=opened_s)
                    if clients == many:
                        took["s"] = row["load"]["duration_s"]


def _many_clients(ctx: Context, scenario: str,
                  load: Callable[[Running, int, float, str, float], LoadResult],
                  capacity_s: float | None = None,
                  kept_open: bool = False, default_cap: int = 64) -> list[dict[str, Any]]:
    """Rows of ``load(gateway, clients, seconds, log_path, opened_s)``:
    1,000 clients (or --clients) against txfanout at max_inflight
    ``default_cap`` (or --max-inflight), after --lead-in seconds of the same
    load on the same gateway; ``kept_open``: on the same connections,
    measured after they were open ``opened_s`` (at least 2 s; as the seed's
    keep-alive rows), else as a load of its own.
    With ``capacity_s``, each gateway's row comes after a row of wrk at
    --connections (64) for that long on the same set-up (label
    "capacity"), and the many-clients row keeps its complete answers/s
    (``capacity_rps``) to quote goodput as a share of it."""
    clients = ctx.clients or (200 if ctx.quick else 1000)
    rows = []
    for fo in _fanouts(ctx):
        for name in ctx.order():
            setup = _setup(ctx, fo, name, default_cap)
            capacity = None
            if capacity_s:
                capacity = measure(ctx, scenario, name, setup,
                                   _wrk_load(ctx, ctx.connections, capacity_s,
                                             f"{scenario}-{name}-fo{fo}-capacity"),
                                   label="capacity")
                capacity["clients"] = ctx.connections
            log_path = os.path.join(ctx.logdir, f"{scenario}-{name}-fo{fo}.load.log")
            opened_s = _opened_s(ctx, lead_in=True) if kept_open else 0.0

            def run(g: Running, log_path: str = log_path) -> LoadResult:
                return load(g, clients, ctx.duration, log_path, opened_s)

            def lead_in(g: Running, log_path: str = log_path) -> None:
                load(g, clients, ctx.lead_in, log_path.replace(".load.log", ".lead-in.load.log"),
                     0.0)
            row = measure(ctx, scenario, name, setup, run, label=f"c{clients}",
                          prepare=lead_in if ctx.lead_in and not kept_open else None,
                          lead_s=opened_s)
            row.update(clients=clients, opened_s=opened_s)
            if capacity is not None:
                cap = capacity["complete_rps"] or 0
                row["capacity_rps"] = capacity["complete_rps"]
                row["capacity_source"] = capacity["complete_rps_source"]
                row["goodput_vs_capacity"] = round(row["goodput_rps"] / cap, 3) if cap else None
                row["complete_vs_capacity"] = (round(row["complete_rps"] / cap, 3)
                                               if cap else None)
            rows.append(row)
    return rows


def overload(ctx: Context) -> None:
    """Offered load far above max_inflight: h2load --h1 closed loop with many
    clients; txfanout capped at max_inflight 64 (or --max-inflight); goodput
    and complete answers/s as shares of the gateway's capacity measured just
    before on the same set-up (wrk c=64, 5 s; --quick 2 s); per-status p99.
    The clients' connections are open before the window (see seed)."""
    _many_clients(ctx, "overload", _h2load_many(ctx), capacity_s=2.0 if ctx.quick else 5.0,
                  kept_open=True)


def _h2load_many(ctx: Context, rps_per_client: float | None = None
                 ) -> Callable[[Running, int, float, str, float], LoadResult]:
    """A many-clients row's load (``_many_clients``): h2load --h1, closed
    loop or at ``rps_per_client``, on connections open ``opened_s`` first."""

    def load(g: Running, clients: int, seconds: float, log_path: str,
             opened_s: float) -> LoadResult:
        return loadgen.h2load(ctx.registry, g.url, ctx.body_path, clients, seconds,
                              ctx.load_cpu, ctx.workdir, rps_per_client=rps_per_client,
                              warmup_s=opened_s, log_path=log_path,
                              name=os.path.basename(log_path)[:-len(".load.log")])
    return load


def polite(ctx: Context) -> None:
    """The overload scenario's offered load (1,000 clients against
    max_inflight 64), from clients that honour Retry-After: after a 503 a
    connection waits 1 s before its next request (wrk, ``polite_script``)."""
    script = loadgen.polite_script(ctx.workdir)

    def load(g: Running, clients: int, seconds: float, log_path: str,
             opened_s: float) -> LoadResult:  # (wrk has no warm-up: never asked one)
        return loadgen.wrk(ctx.registry, g.url, script, clients, seconds, ctx.load_cpu, log_path)
    _many_clients(ctx, "polite", load)


BURST_RPS = 1.0  # each burst client's requests a second


def burst(ctx: Context) -> None:
    """Clients in step: 1,000 (or --clients) kept-alive clients each send
    BURST_RPS requests a second (h2load --rps), all in the same instant (h2load
    starts every client's timer at once), offering less than the gateway
    serves but as one burst a second; txfanout at its default max_inflight
    (or --max-inflight). After a capacity row (wrk c=64, 5 s) on the same
    set-up; the clients' connections are open before the window."""
    for row in _many_clients(ctx, "burst", _h2load_many(ctx, BURST_RPS),
                             capacity_s=2.0 if ctx.quick else 5.0, kept_open=True,
                             default_cap=2000):
        offered = row["clients"] * BURST_RPS
        row["offered_rps"] = offered
        row["complete_vs_offered"] = (round(row["complete_rps"] / offered, 3)
                                      if row.get("complete_rps") is not None else None)


def slow(ctx: Context) -> None:
    """~20% of partner calls take 500 ms against a 300 ms timeout: the gateway
    must cancel them; counts cancellations/s and new upstream connections/s."""
    fanouts = _fanouts(ctx)
    if not ctx.nginx.access_log:
        ctx.notes.append("slow: nginx access log off; delayed-call counts unavailable")
    for fo in fanouts:
        for name in ctx.order():
            setup = Setup(fanout=fo, partner_url=ctx.nginx.base_url + "/mixed")
            # twice the connections: a third of the requests wait 300 ms
            measure(ctx, "slow", name, setup,
                    _wrk_load(ctx, 2 * ctx.connections, ctx.duration, f"slow-{name}-fo{fo}"))


GRACE_MS = 20


def slowpartner(ctx: Context) -> None:
    """One slow partner among fast ones, txfanout only, wrk closed loop at
    --connections (h2load --rps would send in bursts, all clients at once):
    of fan-out N (default 4), p1..pN-1 answer at once and pN is nginx's
    ``/slowtail`` (20% of its calls past the 300 ms timeout). One
    row per way to answer: when every call ended (``answer_when =
    "all"``), at the first ``ok``, and when the fast partners ended plus
    ``GRACE_MS`` (``primary``). pN gets ``tail_sample = 1.0`` in every row
    when the gateway accepts the key, and each row keeps its tail
    histograms."""
    ctx.notes.append("slowpartner: txfanout only (the references have no answer_when, "
                     "primary or grace_ms)")
    probe = Setup(fanout=1, partner_url=ctx.nginx.base_url + "/bid{i}",
                  partner_keys={1: {"tail_sample": 1.0}})
    tail = {"tail_sample": 1.0} if gateways.txfanout_accepts(
        probe, os.path.join(ctx.workdir, "tail-sample-check.toml")) else {}
    if not tail:
        ctx.notes.append("slowpartner: this txfanout refuses the partner key tail_sample "
                         "(check-config): no tail histogram")
    for fo in ctx.fanouts if ctx.fanouts != [1, 2, 8] else [4]:
        if fo < 2:
            ctx.notes.append(f"slowpartner: fan-out {fo} skipped (needs a fast partner too)")
            continue
        slow = {"url": ctx.nginx.base_url + "/slowtail", **tail}
        fast = [f"p{i}" for i in range(1, fo)]
        for label, keys in (("all", {"answer_when": "all"}),
                            ("first_ok", {"answer_when": "first_ok"}),
                            (f"primary+grace{GRACE_MS}", {"primary": fast, "grace_ms": GRACE_MS})):
            for _ in range(ctx.repeat):
                setup = Setup(fanout=fo, partner_url=ctx.nginx.base_url + "/bid{i}",
                              route_keys=keys, partner_keys={fo: slow})
                row = measure(ctx, "slowpartner", gateways.TXFANOUT, setup,
                              _wrk_load(ctx, ctx.connections, ctx.duration,
                                        f"slowpartner-fo{fo}-{label}"), label=label)
                row.update(route_keys=keys, tail_sample=bool(tail),
                           tail=tail_histograms(row["metrics_file"]))


def soak(ctx: Context) -> None:
    """Minutes at ~70% of each gateway's own capacity (h2load fixed rate);
    RSS sampled every 0.5 s; its slope over the load window."""
    fanouts = _fanouts(ctx)
    probe = 2 if ctx.quick else 5
    clients = 64
    for fo in fanouts:
        for name in ctx.order():
            setup = Setup(fanout=fo, partner_url=ctx.nginx.base_url + "/bid{i}",
                          workers=ctx.workers if name == gateways.TXFANOUT else 1)
            cap: dict[str, float] = {}

            def probe_capacity(g: Running) -> None:
                tag = f"soak-{g.name}-fo{fo}"
                capacity = loadgen.wrk(ctx.registry, g.url, ctx.lua_path, ctx.connections,
                                       probe, ctx.load_cpu,
                                       os.path.join(ctx.logdir, f"{tag}.probe.log"))
                cap["capacity_rps"] = capacity.rps
                cap["target_rps"] = round(max(1.0, 0.7 * capacity.rps), 1)
                ctx.progress(f"  {tag}: capacity {capacity.rps:.0f} req/s; soaking at "
                             f"{cap['target_rps']:.0f} req/s for {ctx.duration:.0f} s")

            def run(g: Running) -> LoadResult:
                tag = f"soak-{g.name}-fo{fo}"
                return loadgen.h2load(ctx.registry, g.url, ctx.body_path, clients, ctx.duration,
                                      ctx.load_cpu, ctx.workdir,
                                      rps_per_client=cap["target_rps"] / clients,
                                      log_path=os.path.join(ctx.logdir, f"{tag}.load.log"),
                                      name=tag)
            # txfanout's workers share every core, as in the workers scenario
            row = measure(ctx, "soak", name, setup, run, prepare=probe_capacity,
                          gw_cpu=_all_cpus(ctx) if setup.workers > 1 else "default")
            row.update(cap)


def _all_cpus(ctx: Context) -> str | None:
    """Where a gateway of several processes runs: not pinned to one CPU (the
    harness runs on the load CPU, so it says "all" rather than nothing)."""
    return f"0-{(os.cpu_count() or 1) - 1}" if ctx.load_cpu is not None else None


def workers(ctx: Context) -> None:
    """txfanout in 1 vs 2 processes (steady load, fan-out 2, gateway not
    pinned so that both processes can use both cores)."""
    fanouts = _fanouts(ctx)
    has_workers = gateways.supports_workers()
    all_cpus = _all_cpus(ctx)
    if not has_workers:
        ctx.notes.append("workers: txfanout has no --workers option yet "
                         "(`twistd fanout --help`); the 2-process row is skipped")
    for fo in fanouts:
        for n in ((1, 2) if has_workers else (1,)) * ctx.repeat:
            setup = Setup(fanout=fo, partner_url=ctx.nginx.base_url + "/bid{i}", workers=n)
            measure(ctx, "workers", gateways.TXFANOUT, setup,
                    _wrk_load(ctx, ctx.connections, ctx.duration, f"workers-{n}-fo{fo}"),
                    label=f"{n}proc", gw_cpu=all_cpus)


RUNNERS: dict[str, Callable[[Context], None]] = {
    "steady": steady, "seed": seed, "overload": overload, "polite": polite, "burst": burst,
    "slow": slow, "slowpartner": slowpartner, "soak": soak, "workers": workers,
}


def rows_expected(scenario: str, gateways_: list[str], fanouts: list[int]) -> int:
    """How many rows a scenario will measure (for the run's time bound)."""
    fos = len(fanouts) if scenario == "steady" or fanouts != [1, 2, 8] else 1
    if scenario == "workers":
        return 2 * fos
    per_gateway = {"seed": 4, "overload": 2, "burst": 2, "slowpartner": 3}.get(scenario, 1)
    return fos * len(gateways_) * per_gateway
