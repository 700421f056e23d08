"""The load generators (wrk, ab, h2load) and parsers for what they print.

Every runner returns a :class:`LoadResult`. Latencies are in milliseconds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .procs import Registry, pinned, run_bounded

BODY = b'{"device":{"geo":{"country":"US"},"os":"android"},"imp":[{"id":"1","banner":{"w":300,"h":250}}]}'

# wrk: POST with a body; count statuses and partner timeouts per thread in
# response(), merge them in done() and print one JSON line.
WRK_LUA = r"""
wrk.method = "POST"
wrk.body = BODY_PLACEHOLDER
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  partner_timeouts = 0
  incomplete = 0
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if body ~= nil then
    local _, n = string.gsub(body, '"outcome": ?"timeout"', "")
    partner_timeouts = partner_timeouts + n
  end
  local c = headers["X-Fanout-Complete"]
  if c == "false" then
    incomplete = incomplete + 1
  end
end

function done(summary, latency, requests)
  local merged = {}
  local to, inc = 0, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for k, v in pairs(s) do
      merged[k] = (merged[k] or 0) + v
    end
    to = to + t:get("partner_timeouts")
    inc = inc + t:get("incomplete")
  end
  local parts = {}
  for k, v in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', k, v))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"statuses":{%s},"partner_timeouts":%d,"incomplete":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ","), to, inc))
end
"""


# A client that honours Retry-After: after each 503, one of the thread's
# connections waits RETRY_MS before its next request (wrk calls delay()
# before every request; wrk's latency starts when the request is sent).
POLITE_LUA = """
function delay()
  if owed > 0 then
    owed = owed - 1
    return RETRY_MS
  end
  return 0
end
"""


def polite_script(workdir: str, retry_ms: int = 1000) -> str:
    """The wrk script of ``write_inputs``, plus a wait of ``retry_ms`` after
    each 503 (the gateway's Retry-After); its path."""
    lua = os.path.join(workdir, "post.lua")
    with open(lua, encoding="utf-8") as f:
        script = f.read()
    script = script.replace("  incomplete = 0\nend", "  incomplete = 0\n  owed = 0\nend", 1)
    script = script.replace("  statuses[k] = (statuses[k] or 0) + 1\n",
                            "  statuses[k] = (statuses[k] or 0) + 1\n"
                            "  if status == 503 then owed = owed + 1 end\n", 1)
    path = os.path.join(workdir, "polite.lua")
    with open(path, "w", encoding="utf-8") as f:
        f.write(script + POLITE_LUA.replace("RETRY_MS", str(retry_ms)))
    return path


@dataclass
class LoadResult:
    """What one load run measured (client side)."""

    tool: str
    duration_s: float
    requests: int
    rps: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    non2xx: int = 0
    by_status: dict[str, dict[str, float]] = field(default_factory=dict)
    # p99 of the 200s sent a second or more into the run (h2load): without
    # the connect storm's first requests, which wait in the listen queue
    p99_200_settled_ms: float | None = None
    partner_timeouts: int | None = None
    incomplete: int | None = None
    raw_tail: str = ""

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("2"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_inputs(workdir: str) -> tuple[str, str]:
    """Write the request body and the wrk script; return their paths."""
    os.makedirs(workdir, exist_ok=True)
    body = os.path.join(workdir, "body.json")
    with open(body, "wb") as f:
        f.write(BODY)
    lua = os.path.join(workdir, "post.lua")
    with open(lua, "w", encoding="utf-8") as f:
        f.write(WRK_LUA.replace("BODY_PLACEHOLDER", json.dumps(BODY.decode())))
    return body, lua


def wrk(registry: Registry, url: str, lua: str, connections: int, duration_s: float,
        cpu: int | None, log_path: str | None = None, threads: int = 1,
        timeout_s: int = 5) -> LoadResult:
    """Closed loop: ``connections`` keep-alive connections for ``duration_s``."""
    secs = max(1, round(duration_s))
    cmd = pinned(["wrk", f"-t{threads}", f"-c{connections}", f"-d{secs}s",
                  "--timeout", f"{timeout_s}s", "-s", lua, url], cpu)
    code, out = run_bounded(cmd, secs + timeout_s + 30, registry, "wrk", log_path)
    return parse_wrk(out, code)


def parse_wrk(out: str, code: int = 0) -> LoadResult:
    """Parse the BENCHJSON line our wrk script prints in done()."""
    m = re.search(r"^BENCHJSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk failed (exit {code}):\n{out[-1500:]}")
    d = json.loads(m.group(1))
    duration = d["duration_us"] / 1e6
    statuses = {k: int(v) for k, v in sorted(d["statuses"].items())}
    return LoadResult(
        tool="wrk", duration_s=round(duration, 3), requests=d["requests"],
        rps=round(d["requests"] / duration, 1) if duration else 0.0,
        p50_ms=d["p50_us"] / 1000, p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000, max_ms=d["max_us"] / 1000,
        statuses=statuses,
        socket_errors={k: v for k, v in d["errors"].items() if k != "status" and v},
        non2xx=sum(v for k, v in statuses.items() if not k.startswith("2")),
        partner_timeouts=d["partner_timeouts"], incomplete=d["incomplete"],
        raw_tail=out[-600:])


def ab(registry: Registry, url: str, body_path: str, requests: int, concurrency: int,
       cpu: int | None, log_path: str | None = None, timeout_s: float = 600,
       time_limit_s: float | None = None) -> LoadResult:
    """``ab -n N -c C -p body -T application/json``, as the seed ran it (no
    keep-alive: one connection per request). With ``time_limit_s``, ``-t T``
    comes first (it implies -n 50000, which the -n after it replaces): ab
    stops after T seconds or N requests, whichever comes first."""
    limit = ["-t", str(max(1, round(time_limit_s)))] if time_limit_s else []
    cmd = pinned(["ab", "-q", "-r", "-s", "10"] + limit + ["-n", str(requests),
                  "-c", str(concurrency), "-p", body_path, "-T", "application/json", url], cpu)
    if time_limit_s:
        timeout_s = min(timeout_s, time_limit_s + 60)
    code, out = run_bounded(cmd, timeout_s, registry, "ab", log_path)
    return parse_ab(out, code)


def parse_ab(out: str, code: int = 0) -> LoadResult:
    """Parse ab's report."""

    def num(pattern: str, default: float | None = None) -> float | None:
        m = re.search(pattern, out, re.M)
        return float(m.group(1)) if m else default

    complete = num(r"^Complete requests:\s+(\d+)")
    if complete is None:
        raise RuntimeError(f"ab failed (exit {code}):\n{out[-1500:]}")
    duration = num(r"^Time taken for tests:\s+([\d.]+)") or 0.0
    non2xx = int(num(r"^Non-2xx responses:\s+(\d+)", 0) or 0)
    pct = {int(p): float(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M)}
    errors: dict[str, int] = {}
    m = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", out)
    if m:
        # "Length" only says a body's size differed from the first one's; the
        # gateways' bodies carry ids and timings, so it is not an error.
        for name, v in zip(("connect", "receive", "exceptions"), m.group(1, 2, 4)):
            if int(v):
                errors[name] = int(v)
    # ab does not break non-2xx down by code.
    statuses = {"2xx": max(0, int(complete) - non2xx - errors.get("receive", 0)
                           - errors.get("exceptions", 0))}
    if non2xx:
        statuses["non-2xx"] = non2xx
    return LoadResult(
        tool="ab", duration_s=duration, requests=int(complete),
        rps=num(r"^Requests per second:\s+([\d.]+)", 0.0) or 0.0,
        p50_ms=pct.get(50), p90_ms=pct.get(90), p99_ms=pct.get(99), max_ms=pct.get(100),
        statuses=statuses, socket_errors=errors, non2xx=non2xx, raw_tail=out[-600:])


def h2load(registry: Registry, url: str, body_path: str, clients: int, duration_s: float,
           cpu: int | None, workdir: str, rps_per_client: float | None = None,
           warmup_s: float = 0, log_path: str | None = None, name: str = "h2load") -> LoadResult:
    """``h2load --h1``: ``clients`` connections for ``duration_s``, closed loop
    or at ``rps_per_client`` each, measured after ``warmup_s`` on the same
    connections; per-request log parsed for per-status latency."""
    req_log = os.path.join(workdir, f"{name}-requests.tsv")
    if os.path.exists(req_log):
        os.remove(req_log)
    secs = max(1, round(duration_s))
    cmd = ["h2load", "--h1", "-c", str(clients), "-D", str(secs),
           "-d", body_path, "-H", "content-type: application/json",
           "--log-file", req_log]
    if warmup_s:
        cmd += ["--warm-up-time", str(max(1, round(warmup_s)))]
    if rps_per_client:
        cmd += ["--rps", f"{rps_per_client:.3f}"]
    cmd.append(url)
    code, out = run_bounded(pinned(cmd, cpu), secs + warmup_s + 60, registry, name, log_path)
    return parse_h2load(out, req_log, code)


def _percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def latency_summary(values_ms: list[float]) -> dict[str, float]:
    """count, p50, p90, p99, max of a list of latencies (ms)."""
    v = sorted(values_ms)
    return {"count": len(v), "p50_ms": _percentile(v, 50), "p90_ms": _percentile(v, 90),
            "p99_ms": _percentile(v, 99), "max_ms": v[-1] if v else None}  # type: ignore[dict-item]


def parse_h2load(out: str, req_log: str, code: int = 0) -> LoadResult:
    """Parse h2load's summary and its per-request log (start µs, status, µs)."""
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    if not m:
        raise RuntimeError(f"h2load failed (exit {code}):\n{out[-1500:]}")
    duration = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    # with --warm-up-time, "finished in" counts the warm-up too; the counts,
    # req/s and request log are the main duration's alone
    warm = re.search(r"with (\d+)s of warm-up time", out)
    if warm:
        duration -= int(warm.group(1))
    per_status: dict[str, list[float]] = {}
    everything: list[float] = []
    oks: list[tuple[int, float]] = []  # (start µs, ms) of the 200s
    if os.path.exists(req_log):
        with open(req_log, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                status = parts[1].strip()
                ms = int(parts[2]) / 1000.0
                per_status.setdefault(status, []).append(ms)
                everything.append(ms)
                if status == "200":
                    oks.append((int(parts[0]), ms))
    first = min((start for start, _ in oks), default=0)
    settled = latency_summary([ms for start, ms in oks if start >= first + 1_000_000])
    statuses = {k: len(v) for k, v in sorted(per_status.items())}
    errs: dict[str, int] = {}
    m2 = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                   r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m2:
        total, started, done, ok, failed, errored, timeout = map(int, m2.groups())
        if errored:
            errs["errored"] = errored
        if timeout:
            errs["timeout"] = timeout
    overall = latency_summary(everything)
    requests = sum(statuses.values())
    return LoadResult(
        tool="h2load", duration_s=round(duration, 3), requests=requests,
        rps=round(requests / duration, 1) if duration else 0.0,
        p50_ms=overall["p50_ms"], p90_ms=overall["p90_ms"], p99_ms=overall["p99_ms"],
        max_ms=overall["max_ms"], statuses=statuses, socket_errors=errs,
        non2xx=sum(v for k, v in statuses.items() if not k.startswith("2")),
        by_status={k: latency_summary(v) for k, v in per_status.items()},
        p99_200_settled_ms=settled["p99_ms"], raw_tail=out[-600:])
