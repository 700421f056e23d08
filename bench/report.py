"""Turn rows into a markdown table, ratio rows, results.json and PNG plots."""

from __future__ import annotations

import json
import math
import os
from typing import Any

REFERENCE_ORDER = ("bare-twisted", "aiohttp", "aiohttp-uvloop", "go-nethttp")


REPEAT_KEYS = ("rps", "goodput_rps", "complete_rps", "p50_ms", "p99_ms", "cpu_s_per_1k",
               "peak_rss_mb", "other_cpu_util", "cpu_ms_per_complete",
               # what the seed's questions read of each run (summaries)
               "complete_share", "p99_200_ms", "gw_p99_200_ms", "gw_p99_200_over_ms",
               "gw_200_within_deadline", "p99_200_settled_ms",
               # each overload run against the capacity measured right before it
               "complete_vs_capacity")


def collapse(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Repeated rows (same scenario, gateway, fan-out, label) become the run
    with the median req/s; every run's figures are kept under ``repeats``."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["gateway"], r["fanout"], r.get("label"),
                           r.get("workers")), []).append(r)
    out = []
    for runs in groups.values():
        if len(runs) == 1:
            out.append(runs[0])
            continue
        ordered = sorted(runs, key=lambda r: r["rps"])
        chosen = dict(ordered[(len(ordered) - 1) // 2])
        chosen["repeats"] = [{k: r.get(k) for k in REPEAT_KEYS} for r in runs]
        out.append(chosen)
    return out


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _codes(row: dict[str, Any]) -> str:
    parts = [f"{k}:{v}" for k, v in sorted(row["non2xx"].items())]
    parts += [f"{k}:{v}" for k, v in sorted(row["socket_errors"].items())]
    return " ".join(parts) if parts else "0"


def _complete(row: dict[str, Any]) -> str:
    """Complete answers/s and their share of the 200s, saying where the
    figure comes from when it is not the gateway's counters."""
    complete = row.get("complete_rps")
    if complete is None:
        return "–"
    src = row.get("complete_rps_source")
    if src == "nginx bound":
        return f"≤ {complete:.0f}/s (nginx bound)"
    share = row.get("complete_share")
    text = f"{complete:.0f}/s"
    if share is not None:
        text += f" ({100 * share:.1f}% of 200s)"
    return text + (" (wrk)" if src == "wrk" else "")


def _extra(row: dict[str, Any]) -> str:
    """Scenario-specific figures for the last column."""
    s = row["scenario"]
    out: list[str] = []
    complete = row.get("complete_rps")
    if s in ("overload", "polite", "burst"):
        out.append(f"goodput {row['goodput_rps']:.0f}/s")
    if complete is not None and (s in ("overload", "polite", "burst", "seed")
                                 or complete < 0.9 * row["goodput_rps"]):
        out.append(f"complete {_complete(row)}")
    if row.get("answers_vs_client") is not None and abs(row["answers_vs_client"] - 1) > 0.05:
        out.append(f"gateway counted {row['answers_vs_client']:.2f}x the client's 200s")
    if row.get("goodput_vs_capacity") is not None:
        out.append(f"of capacity {_f(row.get('capacity_rps'), 0)}/s: 200s "
                   f"{row['goodput_vs_capacity']:.2f}, complete "
                   f"{_f(row.get('complete_vs_capacity'), 2)}")
    if row.get("offered_rps"):
        out.append(f"offered {row['offered_rps']:.0f}/s in step: complete "
                   f"{_f(row.get('complete_vs_offered'), 2)} of it")
    if s in ("overload", "burst"):
        out.append(f"p99(200) {_f(row.get('p99_200_ms'))} ms")
        if row.get("p99_503_ms") is not None:
            out.append(f"p50(503) {_f(row.get('p50_503_ms'))} ms, "
                       f"p99(503) {_f(row.get('p99_503_ms'))} ms")
        out.append(f"max_inflight {row['max_inflight']}" if row["gateway"] == "txfanout"
                   else "no admission cap")
    if row.get("gc_s_per_1k") is not None:
        out.append(f"of the CPU s/1k req, PyPy's collector {row['gc_s_per_1k']:.3f}")
    if row.get("opened_s"):
        opening = row.get("opening_complete_rps")
        out.append(f"its connections open {row['opened_s']:.0f} s before the window"
                   + ("" if opening is None else f" (complete {opening:.0f}/s meanwhile)"))
    calls = row.get("outcomes") or {}
    if s == "polite":
        out.append(f"max_inflight {row['max_inflight']}" if row["gateway"] == "txfanout"
                   else "no admission cap")
    if s in ("overload", "polite", "burst", "seed") and calls:
        out.extend(_counted(calls))
    if s == "slow":
        out.append(f"cancels {_f(row.get('cancellations_per_s'))}/s")
        out.append(f"new up conns {_f(row.get('upstream_conns_per_s'))}/s")
        delayed = (row.get("nginx_log") or {}).get("delayed")
        if delayed:
            out.append(f"slow calls {sum(delayed.values())}")
    if s == "soak":
        out.append(f"rate {_f(row.get('target_rps'), 0)}/s of cap {_f(row.get('capacity_rps'), 0)}")
        out.append(f"RSS slope {_f(row.get('rss_slope_kib_per_min'))} KiB/min")
        for pid, p in (row.get("process_rss_mb") or {}).items():
            out.append(f"pid {pid} RSS MB ready {_f(p['ready'])}, load {_f(p['load_start'])}"
                       f" -> {_f(p['end'])}, last half {_f(p['last_half'][0])}-"
                       f"{_f(p['last_half'][1])}")
    if s == "workers":
        out.append(f"{row['workers']} process(es)")
    if row.get("repeats"):
        rps = [r["rps"] for r in row["repeats"]]
        out.append(f"median of {len(rps)} runs (req/s {min(rps):.0f}-{max(rps):.0f})")
    if (row.get("other_cpu_util") or 0) >= 0.1:
        out.append(f"NOISY: other processes used {row['other_cpu_util']:.2f} CPU")
    if row.get("incomplete"):
        out.append(f"incomplete {row['incomplete']}")
    if row.get("gateway_log_errors"):
        out.append(f"log tracebacks {row['gateway_log_errors']}")
    return "; ".join(out)


HEADER = ("| gateway | fo | load | req/s | p50 ms | p90 ms | p99 ms | max ms | non-2xx / errors "
          "| CPU s/1k req | peak RSS MB | settled RSS MB | new up conns | up req/s | notes |")
RULE = "|" + "---|" * (HEADER.count("|") - 1)


def _counted(outcomes: dict[str, int]) -> list[str]:
    """A row's scraped counters (scenarios.scrape_outcomes), each under what
    it counts: partner calls by outcome, 503s by reason, client connections
    closed at accept, requests that waited for a slot."""
    calls = {k: v for k, v in outcomes.items() if not k.startswith("shed:")
             and k not in ("abandoned_in_backlog", "queued")}
    shed = {k[len("shed:"):]: v for k, v in outcomes.items() if k.startswith("shed:")}
    out = []
    for label, counts in (("calls", calls), ("503s", shed)):
        if counts:
            out.append(label + " " + " ".join(f"{k}:{v}" for k, v in sorted(counts.items())))
    if outcomes.get("abandoned_in_backlog"):
        out.append(f"connections closed by their clients before accept "
                   f"{outcomes['abandoned_in_backlog']}")
    if outcomes.get("queued"):
        out.append(f"requests that waited for a slot {outcomes['queued']}")
    return out


def _load_label(row: dict[str, Any]) -> str:
    label = row.get("label") or ""
    if row["scenario"] == "workers" or not label:
        return row["tool"]
    if label.startswith(row["tool"]):
        return label
    if label == "capacity":
        return f"{row['tool']} c{row.get('clients')} (capacity)"
    return f"{row['tool']} {label}"


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """txfanout / reference for each (scenario, fan-out) group."""
    out = []
    groups: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        label = (r.get("label") or "") if r["scenario"] != "workers" else ""
        groups.setdefault((r["scenario"], r["fanout"], label), {})[r["gateway"]] = r
    for (scenario, fo, label), by in groups.items():
        tx = by.get("txfanout")
        if tx is None:
            continue
        for ref in REFERENCE_ORDER:
            other = by.get(ref)
            if other is None:
                continue

            def q(key: str) -> float | None:
                a, b = tx.get(key), other.get(key)
                if a is None or b in (None, 0):
                    return None
                return round(a / b, 2)
            out.append({"scenario": scenario, "fanout": fo, "label": label, "reference": ref,
                        "rps": q("rps"), "goodput": q("goodput_rps"),
                        "complete": q("complete_rps"), "p50": q("p50_ms"),
                        "p99": q("p99_ms"), "cpu_per_1k": q("cpu_s_per_1k"),
                        "peak_rss": q("peak_rss_mb")})
    return out


SHARE_OK = 0.9  # >= 90% of the 200s complete
RATIO_OK = 0.9  # complete/s at many clients >= 0.9 of that at 64


def _p99_200(row: dict[str, Any]) -> tuple[float | None, str]:
    """p99 of the 200s and where it comes from: the client (h2load's log;
    wrk or ab when every answer was a 2xx), else txfanout's histogram."""
    if row.get("p99_200_ms") is not None:
        return row["p99_200_ms"], "client"
    if row.get("gw_p99_200_ms") is not None:
        return row["gw_p99_200_ms"], "gateway-side"
    if row.get("gw_p99_200_over_ms") is not None:
        return math.inf, "gateway-side"
    return None, ""


def _pairs(few: dict[str, Any], many: dict[str, Any]
           ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(many clients, few clients) runs of one gateway, fan-out and shape in
    the order they ran: with ``--repeat`` each many-client run is paired
    with the few-client run right after it (``collapse`` keeps every run
    under ``repeats``)."""
    runs_many, runs_few = many.get("repeats"), few.get("repeats")
    if runs_many and runs_few and len(runs_many) == len(runs_few):
        return list(zip(runs_many, runs_few))
    return [(many, few)]


def _median_at(values: list[float | None]) -> int | None:
    """Where the median of the known ``values`` is (the lower one of an
    even count); None when none is known."""
    known = sorted((v, i) for i, v in enumerate(values) if v is not None)
    return known[(len(known) - 1) // 2][1] if known else None


def summaries(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The answers the seed and overload scenarios exist for, per gateway:

    - seed, per shape (new connection per request, keep-alive): the share
      of the 200s that were complete at many clients, complete/s at many
      clients as a share of complete/s at 64, and the p99 of the 200s
      against the deadline. With ``--repeat``, each many-client row is
      compared with the 64-client row run right after it: the ratio is the
      pairs' median (the lower one of an even count), every pair's ratio is
      listed, and the share and p99 are the worst run's;
    - overload: goodput (200/s) and complete/s as shares of the capacity
      measured just before (wrk c=64). With ``--repeat``, complete/s ÷
      capacity is the runs' median (the lower one of an even count), each
      run against its own capacity row, and every run's share is listed."""
    seed: list[dict[str, Any]] = []
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["scenario"] == "seed" and r.get("shape"):
            groups.setdefault((r["gateway"], r["fanout"], r["shape"]), []).append(r)
    for (gw, fo, shape), rs in groups.items():
        ordered = sorted(rs, key=lambda r: r.get("clients") or 0)
        few_row, many_row = ordered[0], ordered[-1]
        if few_row is many_row:
            continue
        pairs = _pairs(few_row, many_row)
        ratios = [round(m["complete_rps"] / f["complete_rps"], 3) if f.get("complete_rps")
                  else None for m, f in pairs]
        at = _median_at(ratios)
        ratio, (many, few) = (None, pairs[0]) if at is None else (ratios[at], pairs[at])
        shares = [m.get("complete_share") for m, _ in pairs]
        share = None if None in shares else min(shares)
        worst = max((_p99_200(m) for m, _ in pairs),
                    key=lambda p: -1.0 if p[0] is None else p[0])
        p99, p99_src = worst
        deadline = many_row.get("deadline_ms") or 500
        settled = [m.get("p99_200_settled_ms") for m, _ in pairs]
        within = [m.get("gw_200_within_deadline") for m, _ in pairs]
        seed.append({
            "gateway": gw, "fanout": fo, "shape": shape,
            "clients": many_row.get("clients"), "clients_ref": few_row.get("clients"),
            "complete_rps": many.get("complete_rps"), "complete_rps_ref": few.get("complete_rps"),
            "complete_source": many_row.get("complete_rps_source"),
            "complete_share": share, "share_ok": None if share is None else share >= SHARE_OK,
            "complete_ratio": ratio, "ratio_ok": None if ratio is None else ratio >= RATIO_OK,
            "complete_ratios": ratios,
            "p99_200_ms": None if p99 is not None and math.isinf(p99) else p99,
            "p99_200_source": p99_src, "deadline_ms": deadline,
            "p99_ok": None if p99 is None else p99 <= deadline,
            "gw_200_within_deadline": None if None in within else min(within),
            "p99_200_settled_ms": None if None in settled else max(settled),
        })
    overload = []
    for r in rows:
        if r["scenario"] == "overload" and r.get("label") != "capacity":
            q = {k: r.get(k) for k in (
                "gateway", "fanout", "clients", "capacity_rps", "capacity_source", "rps",
                "goodput_rps", "complete_rps", "complete_share", "rps_503", "p99_200_ms",
                "p99_503_ms", "goodput_vs_capacity", "complete_vs_capacity")}
            shares = _runs(r, "complete_vs_capacity")
            at = _median_at(shares)
            q["complete_vs_capacity_runs"] = shares
            q["complete_vs_capacity"] = None if at is None else shares[at]
            capacity = [c for c in rows if c["scenario"] == "overload"
                        and c.get("label") == "capacity"
                        and (c["gateway"], c["fanout"]) == (r["gateway"], r["fanout"])]
            q["cpu_ms_per_complete_runs"] = _runs(r, "cpu_ms_per_complete")
            q["capacity_cpu_ms_per_complete_runs"] = (_runs(capacity[0], "cpu_ms_per_complete")
                                                      if capacity else [])
            overload.append(q)
    return {"seed": seed, "overload": overload}


def _yes(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**NO**")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _rate_503(row: dict[str, Any]) -> str:
    v = row.get("rps_503")
    if v is None:
        return "–"
    src = row.get("rps_503_source")
    return f"{v:.0f}" + (" (ab non-2xx)" if src == "ab non-2xx" else "")


def _gw_p99(row: dict[str, Any]) -> str:
    if row.get("gw_p99_ms") is None and row.get("gw_p99_over_ms") is None:
        return "–"

    def one(key: str) -> str:
        if row.get(key) is not None:
            return f"{row[key]:.0f}"
        over = row.get(key.replace("_ms", "_over_ms"))
        return f"> {over:.0f}" if over is not None else "–"
    return f"{one('gw_p99_ms')} / {one('gw_p99_200_ms')}"


def _runs(row: dict[str, Any], key: str) -> list[Any]:
    """``row[key]``; with --repeat, every run's."""
    return [r.get(key) for r in row.get("repeats") or [row]]


def _cpu_per_complete(runs: list[float | None]) -> str:
    """The gateway's CPU ms per complete answer, of each run."""
    return ", ".join(_f(v, 3) for v in runs) or "–"


def _seed_markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[str]:
    seed_rows = [r for r in rows if r["scenario"] == "seed" and r.get("shape")]
    if not seed_rows:
        return []
    lines = ["", "Seed: every gateway at many clients and at few, in both shapes, same run. "
             "complete = every selected partner called and answered, from the gateway's own "
             "counters; p99 of the 200s and of the 503s from h2load's per-request log, from "
             "ab only when every answer was a 2xx (ab gives no per-status latency); gw p99 = "
             "txfanout's histogram over the window (first byte to answer: the accept queue "
             "is not in it), all answers / the 200s; gw CPU ms per complete = the "
             "gateway's CPU over the window per complete answer (with --repeat, each run's):",
             "",
             "| gateway | fo | shape | load | req/s | 200/s | complete/s | complete % of 200s "
             "| 503/s | p99 200s ms | p99 503s ms | p99 all ms (client) | gw p99 ms (all / 200s) "
             "| gw CPU ms per complete |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in seed_rows:
        bound = "≤ " if r.get("complete_rps_source") == "nginx bound" else ""
        lines.append(" | ".join([
            f"| {r['gateway']}", str(r["fanout"]), r["shape"], r.get("label") or "",
            _f(r["rps"], 0), _f(r["goodput_rps"], 0), f"{bound}{_f(r['complete_rps'], 0)}",
            _pct(r.get("complete_share")), _rate_503(r), _f(r.get("p99_200_ms"), 1),
            _f(r.get("p99_503_ms"), 1), _f(r["p99_ms"], 1), _gw_p99(r),
            _cpu_per_complete(_runs(r, "cpu_ms_per_complete"))]) + " |")
    if summary:
        lines += ["", f"Seed, the three questions (at {summary[0]['clients']} clients; "
                  f"reference {summary[0]['clients_ref']} clients, same gateway, same shape):",
                  "",
                  f"| gateway | fo | shape | >= {100 * SHARE_OK:.0f}% of 200s complete? "
                  f"| complete/s >= {RATIO_OK} x the {summary[0]['clients_ref']}-client rate? "
                  f"| p99 of the 200s <= deadline? |",
                  "|---|---|---|---|---|---|"]
        for q in summary:
            ratio = ("–" if q["complete_ratio"] is None else
                     f"{q['complete_ratio']:.2f} ({_f(q['complete_rps'], 0)} / "
                     f"{_f(q['complete_rps_ref'], 0)}/s) {_yes(q['ratio_ok'])}")
            if len(q.get("complete_ratios", [])) > 1:
                ratio += " (median; pairs: " + ", ".join(
                    "–" if r is None else f"{r:.2f}" for r in q["complete_ratios"]) + ")"
            if q["p99_200_source"]:
                p99 = ("> 5000 ms" if q["p99_200_ms"] is None else f"{q['p99_200_ms']:.0f} ms")
                p99 += f" ({q['p99_200_source']}) vs {q['deadline_ms']} ms {_yes(q['p99_ok'])}"
            else:
                p99 = "– (ab mixes statuses)"
            settled = q.get("p99_200_settled_ms")
            if settled is not None and q["p99_200_source"] == "client":
                p99 += (f"; sent 1 s on (after the connect storm): {settled:.0f} ms "
                        f"{_yes(settled <= q['deadline_ms'])}")
            if q.get("gw_200_within_deadline") is not None:
                p99 += f"; gw: {_pct(q['gw_200_within_deadline'])} of 200s within it"
            bound = " (nginx bound)" if q["complete_source"] == "nginx bound" else ""
            lines.append(f"| {q['gateway']} | {q['fanout']} | {q['shape']} | "
                         f"{_pct(q['complete_share'])}{bound} {_yes(q['share_ok'])} | "
                         f"{ratio} | {p99} |")
    return lines


def _overload_markdown(summary: list[dict[str, Any]]) -> list[str]:
    if not summary:
        return []
    lines = ["", "Overload: goodput as a share of each gateway's capacity, measured just before "
             "on the same set-up (wrk c=64, complete answers/s); gw CPU ms per complete = the "
             "gateway's CPU over the window per complete answer, each run's:", "",
             "| gateway | fo | clients | capacity complete/s | req/s | 200/s | complete/s "
             "| complete % of 200s | 503/s | p99 200s ms | p99 503s ms | 200/s ÷ capacity "
             "| complete/s ÷ capacity | gw CPU ms per complete, this row / capacity |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for q in summary:
        share = _f(q["complete_vs_capacity"], 2)
        if len(q.get("complete_vs_capacity_runs") or []) > 1:
            share += " (median; runs: " + ", ".join(
                _f(v, 2) for v in q["complete_vs_capacity_runs"]) + ")"
        lines.append(" | ".join([
            f"| {q['gateway']}", str(q["fanout"]), str(q["clients"]), _f(q["capacity_rps"], 0),
            _f(q["rps"], 0), _f(q["goodput_rps"], 0), _f(q["complete_rps"], 0),
            _pct(q["complete_share"]), _f(q["rps_503"], 0), _f(q["p99_200_ms"], 1),
            _f(q["p99_503_ms"], 1), _f(q["goodput_vs_capacity"], 2), share,
            _cpu_per_complete(q["cpu_ms_per_complete_runs"]) + " / "
            + _cpu_per_complete(q["capacity_cpu_ms_per_complete_runs"])]) + " |")
    return lines


def _slowpartner_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The slowpartner rows side by side, then each tail histogram found
    (scenarios.TAIL_FAMILY) as le -> cumulative count per row and partner."""
    rs = [r for r in rows if r["scenario"] == "slowpartner"]
    if not rs:
        return []
    lines = ["", "Slow partner: pN on /slowtail (20% of its calls past the partner timeout), "
             "the others answer at once; txfanout under wrk. p50/p99 of the answers (client); "
             "complete = every partner answered, and partner calls by outcome, from the "
             "gateway's /metrics (calls: since it started, warm-up included):", "",
             "| fo | route keys | tail_sample | req/s | p50 ms | p99 ms | gw p99 ms (all / 200s) "
             "| complete % of 200s | new up conns/s | partner calls |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in r["route_keys"].items())
        calls = " ".join(f"{k}:{v}" for k, v in sorted((r.get("outcomes") or {}).items()))
        lines.append(" | ".join([
            f"| {r['fanout']}", f"`{keys}`", "1.0" if r["tail_sample"] else "–",
            _f(r["rps"], 0), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2), _gw_p99(r),
            _pct(r.get("complete_share")), _f(r["upstream_conns_per_s"]), calls or "–"]) + " |")
    for family in dict.fromkeys(f for r in rs for f in r["tail"]):
        cols = [(f"{r['label']} {p}", dict(b)) for r in rs
                for p, b in r["tail"].get(family, {}).items()]
        les = list(dict.fromkeys(le for _, b in cols for le in b))
        lines += ["", f"`{family}` (cumulative count by bucket, since the gateway started):", "",
                  "| le | " + " | ".join(c for c, _ in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        lines += [f"| {le} | " + " | ".join(str(b.get(le, "–")) for _, b in cols) + " |"
                  for le in les]
    return lines


def markdown(rows: list[dict[str, Any]], notes: list[str]) -> str:
    """The result table, ratio rows and notes as markdown."""
    lines = [HEADER, RULE]
    for r in rows:
        lines.append("| " + " | ".join([
            r["gateway"] + (f" ({r['label']})" if r.get("label") and r["scenario"] == "workers"
                            else ""),
            str(r["fanout"]), _load_label(r), _f(r["rps"], 0), _f(r["p50_ms"], 2),
            _f(r["p90_ms"], 2), _f(r["p99_ms"], 2), _f(r["max_ms"], 1), _codes(r),
            _f(r["cpu_s_per_1k"], 3), _f(r["peak_rss_mb"]), _f(r["settled_rss_mb"]),
            str(r["upstream_conns_new"]), _f(r["upstream_rps"], 0), _extra(r)]) + " |")
    rat = ratios(rows)
    if rat:
        lines += ["", "Ratios, txfanout / reference (req/s, goodput and complete/s: higher is "
                  "better for txfanout; p50, p99, CPU and RSS: lower is better). complete/s = "
                  "answers in which every partner answered:", "",
                  "| scenario | fo | txfanout / | req/s | goodput (200/s) | complete/s | p50 | p99 "
                  "| CPU s/1k | peak RSS |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for q in rat:
            lines.append(f"| {q['scenario'] + (' ' + q['label'] if q['label'] else '')} | "
                         f"{q['fanout']} | {q['reference']} | "
                         f"{_f(q['rps'], 2)} | {_f(q['goodput'], 2)} | {_f(q['complete'], 2)} | "
                         f"{_f(q['p50'], 2)} | "
                         f"{_f(q['p99'], 2)} | {_f(q['cpu_per_1k'], 2)} | {_f(q['peak_rss'], 2)} |")
    summary = summaries(rows)
    lines += _seed_markdown(rows, summary["seed"])
    lines += _overload_markdown(summary["overload"])
    lines += _slowpartner_markdown(rows)
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_json(path: str, meta: dict[str, Any], rows: list[dict[str, Any]],
               notes: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows, "ratios": ratios(rows),
                   "summaries": summaries(rows), "notes": notes}, f, indent=2)


def plots(outdir: str, rows: list[dict[str, Any]], title: str) -> list[str]:
    """throughput.png, latency.png, rss.png; returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if not rows:
        return []
    written = []
    gws = list(dict.fromkeys(r["gateway"] + (f" {r['label']}" if r["scenario"] == "workers"
                                             else "") for r in rows))

    def group(r: dict[str, Any]) -> tuple[str, int, str]:
        return (r["scenario"], r["fanout"],
                (r.get("label") or "") if r["scenario"] != "workers" else "")

    groups = list(dict.fromkeys(group(r) for r in rows))

    def key(r: dict[str, Any]) -> str:
        return r["gateway"] + (f" {r['label']}" if r["scenario"] == "workers" else "")

    def bars(metric: str, ylabel: str, fname: str, second: str | None = None) -> None:
        fig, ax = plt.subplots(figsize=(max(6, 2 + 1.6 * len(groups)), 4.5))
        width = 0.8 / max(1, len(gws))
        for i, gw in enumerate(gws):
            xs, ys, lows = [], [], []
            for j, g in enumerate(groups):
                for r in rows:
                    if group(r) == g and key(r) == gw:
                        xs.append(j + i * width)
                        ys.append(r.get(metric) or 0)
                        lows.append(r.get(second) or 0 if second else 0)
            bars_ = ax.bar(xs, ys, width, label=gw)
            if second:
                ax.scatter(xs, lows, marker="_", color="black", s=200, zorder=3)
            ax.bar_label(bars_, fmt="%.0f" if metric.endswith("rps") else "%.1f", fontsize=7)
        ax.set_xticks([j + width * (len(gws) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{s}{' ' + lb if lb else ''}\nfan-out {fo}" for s, fo, lb in groups])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(outdir, fname)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    bars("rps", "requests/s (all answers)", "throughput.png")
    if any(r["scenario"] in ("overload", "seed") for r in rows):
        bars("goodput_rps", "200 answers/s", "goodput.png")
        bars("complete_rps", "complete answers/s", "complete.png")
    bars("p99_ms", "p99 latency, ms (tick: p50)", "latency.png", second="p50_ms")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        tl = r.get("rss_timeline") or []
        if tl:
            ax.plot([t for t, _ in tl], [m for _, m in tl],
                    label=f"{key(r)} fo{r['fanout']} ({r['scenario']})")
    ax.set_xlabel("seconds since the gateway started")
    ax.set_ylabel("RSS, MB (process tree)")
    ax.set_title(f"{title}: RSS sampled every 0.5 s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(outdir, "rss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
