"""``python -m bench run --scenario steady --duration 15 [--out DIR]``.

Also ``python -m bench check`` (preconditions only) and ``python -m bench
count`` (instructions per request, under callgrind). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from . import gateways, instructions, loadgen, nginx, preflight, report, scenarios
from .procs import Interrupted, Registry, free_port, install_signal_handlers, set_time_bound

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not values or any(not 1 <= v <= 8 for v in values):
        raise argparse.ArgumentTypeError("fan-outs are integers from 1 to 8")
    return values


def _csv_names(text: str, known: Sequence[str], what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in known]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; known: {', '.join(known)}")
    return values


def _csv_gateways(text: str) -> list[str]:
    return _csv_names(text, gateways.ALL, "gateway(s)")


def _csv_shapes(text: str) -> list[str]:
    names = _csv_names(text, list(scenarios.SEED_SHAPES), "shape(s)")
    return [scenarios.SEED_SHAPES[name] for name in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench",
                                description="txfanout benchmark harness (loopback only).")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario and write table, JSON and plots")
    run.add_argument("--scenario", choices=scenarios.SCENARIOS, default="steady")
    run.add_argument("--duration", type=float, default=None,
                     help="seconds of measured load per row (default 15, soak 120; seed: "
                          "its keep-alive rows; its ab rows are sized by -n, and ab -c 64 runs "
                          "as long as ab -c 2500 took)")
    run.add_argument("--fanouts", type=_csv_ints, default=[1, 2, 8],
                     help="comma-separated fan-outs (steady default 1,2,8; other scenarios 2)")
    run.add_argument("--gateways", type=_csv_gateways,
                     default=[gateways.TXFANOUT, gateways.BARE_TWISTED, gateways.AIOHTTP],
                     help="comma-separated, from: " + ", ".join(gateways.ALL))
    run.add_argument("--shapes", type=_csv_shapes, default=list(scenarios.SEED_SHAPES.values()),
                     help="seed: comma-separated, from: ab (a new connection per request), "
                          "keep-alive (h2load) (default both)")
    run.add_argument("--connections", type=int, default=64,
                     help="closed-loop connections for wrk, and the few clients of the "
                          "seed's reference rows (default 64; seed --quick: 16)")
    run.add_argument("--out", default=None, help="output folder (default bench/out/<timestamp>)")
    run.add_argument("--quick", action="store_true",
                     help="smoke-test sizes: 2 s rows, 1 s warm-up (PyPy 3 s), 1 s settle, "
                          "small ab/h2load")
    run.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 2; on PyPy 10)")
    run.add_argument("--lead-in", type=float, default=None,
                     help="seconds of a many-clients row's own load (seed's 2,500 clients, "
                          "overload's and polite's 1,000) before its measured window, on the "
                          "same gateway (default 0; on PyPy 15, 0 with --quick): PyPy's JIT "
                          "compiles for a new shape of load for its first 10-15 s")
    run.add_argument("--txfanout-warmup", type=int, default=None,
                     help="requests txfanout sends through itself before it is ready "
                          "(its --warmup; default on PyPy 1000, as the systemd drop-in, "
                          "300 with --quick; 0 on CPython)")
    run.add_argument("--settle", type=float, default=None,
                     help="seconds after the load before 'settled RSS' (default 5)")
    run.add_argument("--wait-idle", type=float, default=None,
                     help="before each row, wait up to S seconds for other processes to use "
                          "less than 0.25 CPU (default 30; 0 with --quick)")
    run.add_argument("--repeat", type=int, default=1,
                     help="run each row N times, gateways interleaved; report the median "
                          "req/s run (all runs kept in the JSON)")
    run.add_argument("--no-pin", action="store_true",
                     help="do not pin (default on >= 2 CPUs: gateway on CPU 0, "
                          "load generator and nginx on CPU 1)")
    run.add_argument("--clients", type=int, default=None,
                     help="overload, polite, burst: clients (default 1000; 200 with --quick); "
                          "seed: the many clients (default 2500; 200 with --quick)")
    run.add_argument("--max-inflight", type=int, default=None,
                     help="txfanout's max_inflight (default: overload and polite 64, others 2000)")
    run.add_argument("--workers", type=int, default=1,
                     help="soak: run txfanout with --workers N (not pinned) and report each "
                          "process's RSS (default 1)")
    run.add_argument("--no-plots", action="store_true")
    sub.add_parser("check", help="check preconditions and exit")
    count = sub.add_parser("count", help="count a request's instructions and cache misses "
                                         "under callgrind, with and without many connections")
    count.add_argument("--idle", type=_positive, default=2436,
                       help="connections open beside the 64 busy ones (default 2436: "
                            "2,500 in all, as the seed's storm)")
    count.add_argument("--requests", type=_positive, default=1280,
                       help=f"requests per phase, a multiple of {instructions.BATCH} "
                            "(default 1280)")
    count.add_argument("--last-level-mb", type=_positive, default=None,
                       help="simulate a last-level cache of this many MB (16-way) rather "
                            "than the host's: a VM's share of it")
    count.add_argument("--out", default=None,
                       help="output folder (default bench/out/<timestamp>-count)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for tool, args in (("nginx", ["-v"]), ("wrk", ["-v"]), ("ab", ["-V"]),
                       ("h2load", ["--version"]), ("go", ["version"])):
        if shutil.which(tool):
            try:
                r = subprocess.run([tool] + args, capture_output=True, text=True, timeout=10)
                out[tool] = (r.stdout + r.stderr).strip().splitlines()[0]
            except (OSError, subprocess.TimeoutExpired, IndexError):
                pass
    for mod in ("twisted", "treq", "klein", "aiohttp", "uvloop"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod if mod != "twisted" else "Twisted")
        except Exception:  # noqa: BLE001 - not installed is fine here
            pass
    return out


def _git_commit() -> str:
    try:
        r = subprocess.run(["git", "-C", BENCH_DIR, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", BENCH_DIR, "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    scenario = args.scenario
    quick = args.quick
    duration = args.duration if args.duration is not None else (
        2.0 if quick else float(scenarios.DEFAULT_DURATION[scenario]))
    # PyPy's JIT compiles the request path in its first seconds under load,
    # stalling the loop; a cold gateway then sheds much of a short row.
    warmup = args.warmup if args.warmup is not None else (
        (3.0 if quick else 10.0) if platform.python_implementation() == "PyPy"
        else (1.0 if quick else 2.0))
    settle = args.settle if args.settle is not None else (1.0 if quick else 5.0)
    lead_in = args.lead_in if args.lead_in is not None else (
        15.0 if platform.python_implementation() == "PyPy" and not quick else 0.0)
    # txfanout's own warm-up (its --warmup) on PyPy, shorter in a quick run:
    # without it a cold JIT on a slow core can lag past max_lag_ms, refuse
    # every client of a 2 s row, and hold each one past the row's end.
    gateways.txfanout_warmup = args.txfanout_warmup if args.txfanout_warmup is not None else (
        (300 if quick else 1000) if platform.python_implementation() == "PyPy" else 0)
    wait_idle = args.wait_idle if args.wait_idle is not None else (0.0 if quick else 30.0)
    ncpu = os.cpu_count() or 1
    pin = not args.no_pin and ncpu >= 2
    gws = args.gateways if scenario not in scenarios.TXFANOUT_ONLY else [gateways.TXFANOUT]

    pre = preflight.check(scenarios.TOOLS[scenario], gws, not args.no_plots, pin)
    for w in pre.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if pre.problems:
        print("cannot run:", file=sys.stderr)
        for p in pre.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    early_notes = [f"{gw} skipped: {w}" for gw in pre.skipped
                   for w in pre.warnings if w.startswith(f"gateway {gw} ")]
    gws = [g for g in gws if g not in pre.skipped]
    if not gws:
        print("cannot run: no gateway left to measure", file=sys.stderr)
        return 2

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.abspath(args.out or os.path.join(BENCH_DIR, "out", f"{stamp}-{scenario}"))
    os.makedirs(outdir, exist_ok=True)
    logdir = os.path.join(outdir, "logs")
    workdir = os.path.join(outdir, "work")
    os.makedirs(logdir, exist_ok=True)
    body_path, lua_path = loadgen.write_inputs(workdir)

    n_rows = scenarios.rows_expected(scenario, gws, args.fanouts) * max(1, args.repeat)
    per_row = (warmup + lead_in + duration + settle + wait_idle + 20
               + (60 if scenario == "seed" else 0) + (5 if scenario == "soak" else 0))
    bound = 120 + 2 * n_rows * per_row
    install_signal_handlers()
    build_dir = None
    if gateways.GO_NETHTTP in gws:
        # built once per run, with its cache, in a temp dir removed at the end
        build_dir = tempfile.mkdtemp(prefix="bench-go-")
        print("bench: building go-nethttp (bench/ref_go) with go", flush=True)
        why = gateways.build_go(build_dir, os.path.join(logdir, "go-build.log"))
        if why:
            print(f"warning: go-nethttp skipped: {why}", file=sys.stderr)
            early_notes.append(f"go-nethttp skipped: {why}")
            gws = [g for g in gws if g != gateways.GO_NETHTTP]
    set_time_bound(bound)

    gw_cpu, load_cpu = (0, 1) if pin else (None, None)
    if pin:
        # keep the harness itself off the gateway's CPU (PyPy 3.9's os has no sched_setaffinity)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {load_cpu})
        else:
            subprocess.run(["taskset", "-pc", str(load_cpu), str(os.getpid())], check=True,
                           stdout=subprocess.DEVNULL)
    meta: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "scenario": scenario, "duration_s": duration, "warmup_s": warmup, "lead_in_s": lead_in,
        "settle_s": settle,
        "txfanout_warmup": gateways.txfanout_warmup,
        "wait_idle_s": wait_idle,
        "quick": quick, "fanouts": args.fanouts, "gateways": gws,
        "connections": args.connections, "repeat": max(1, args.repeat),
        "pinning": ({"gateway_cpu": gw_cpu, "load_generator_cpu": load_cpu, "nginx_cpu": load_cpu}
                    if pin else None),
        "host": platform.node(), "kernel": platform.release(),
        "git": _git_commit(), "versions": _versions(), "preflight": pre.facts,
        "warnings": pre.warnings, "time_bound_s": round(bound),
    }
    print(f"bench: scenario {scenario}, {duration:g} s per row, gateways {', '.join(gws)}; "
          f"{'gateway on CPU 0, load generator + nginx on CPU 1' if pin else 'no pinning'}; "
          f"output {outdir}", flush=True)

    registry = Registry()
    ngx_dir = tempfile.mkdtemp(prefix="bench-nginx-")
    ctx = None
    status = 0
    try:
        partner = nginx.start(registry, ngx_dir, free_port(), cpu=load_cpu,
                              access_log=(scenario == "slow"))
        meta["nginx"] = {"port": partner.port, "pid": partner.child.pid}
        ctx = scenarios.Context(
            registry=registry, nginx=partner, workdir=workdir, logdir=logdir,
            body_path=body_path, lua_path=lua_path, gateways=gws, fanouts=args.fanouts,
            duration=duration, warmup=warmup, lead_in=lead_in, settle=settle,
            connections=args.connections,
            gw_cpu=gw_cpu, load_cpu=load_cpu, quick=quick, wait_idle=wait_idle,
            repeat=max(1, args.repeat), clients=args.clients, max_inflight=args.max_inflight,
            workers=max(1, args.workers),
            shapes=args.shapes,
            progress=lambda m: print(m, flush=True))
        started = time.monotonic()
        scenarios.RUNNERS[scenario](ctx)
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"\nbench: interrupted ({e or 'Ctrl-C'}); stopping everything it started",
              file=sys.stderr)
        status = 130
    except RuntimeError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        status = 1
    finally:
        signal_safe_stop(registry)
        try:
            with open(os.path.join(ngx_dir, "error.log"), encoding="utf-8") as f:
                err = f.read()
            with open(os.path.join(logdir, "nginx-error.log"), "w", encoding="utf-8") as f:
                f.write(err)
        except OSError:
            pass
        shutil.rmtree(ngx_dir, ignore_errors=True)
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)

    meta["started"] = [{"name": n, "pid": pid} for n, pid in registry.started]
    meta["left_running"] = [pid for _, pid in registry.started if _alive(pid)]
    rows = report.collapse(ctx.rows) if ctx else []
    notes = early_notes + (ctx.notes if ctx else [])
    if status:
        notes.append(f"run did not finish (exit {status}); rows so far only")
    meta["pinning_note"] = ("gateway pinned to CPU 0 with taskset; wrk/ab/h2load, nginx and "
                            "the harness pinned to CPU 1" if pin else "not pinned")
    table = report.markdown(rows, notes)
    report.write_json(os.path.join(outdir, "results.json"), meta, rows, notes)
    with open(os.path.join(outdir, "table.md"), "w", encoding="utf-8") as f:
        f.write(f"{meta['date']} `{meta['command']}`\n\n{table}")
    written = [] if args.no_plots else report.plots(outdir, rows, f"{scenario}")
    print()
    print(table)
    print(f"wrote {os.path.join(outdir, 'results.json')}, table.md"
          + (", " + ", ".join(os.path.basename(p) for p in written) if written else ""))
    return status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_safe_stop(registry: Registry) -> None:
    """Stop every child even if another signal or the time bound arrives."""
    import signal

    signal.setitimer(signal.ITIMER_REAL, 0)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        registry.stop_all()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def check(_: argparse.Namespace) -> int:
    tools = set().union(*scenarios.TOOLS.values())
    pre = preflight.check(tools, [gateways.TXFANOUT, gateways.BARE_TWISTED, gateways.AIOHTTP,
                                  gateways.GO_NETHTTP], True, True)
    pre.facts["uvloop"] = preflight.has_module("uvloop")
    for p in pre.problems:
        print(f"missing: {p}")
    for w in pre.warnings:
        print(f"warning: {w}")
    print(f"facts: {pre.facts}")
    print(f"txfanout --workers supported: {gateways.supports_workers()}")
    return 1 if pre.problems else 0


def count(args: argparse.Namespace) -> int:
    """``python -m bench count``: see bench/instructions.py."""
    missing = [tool for tool in ("valgrind", "callgrind_control", "nginx")
               if shutil.which(tool) is None]
    if missing:
        print("bench count: not installed: " + ", ".join(missing)
              + " (apt-get install valgrind nginx libnginx-mod-http-echo)",
              file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(BENCH_DIR, "out", f"{stamp}-count"))
    print(f"bench: count, {args.requests} requests per phase, {args.idle} idle connections; "
          f"output {out}", flush=True)
    try:
        phases = instructions.run(out, args.idle, args.requests, args.last_level_mb)
    except ValueError as e:
        print(f"bench count: {e}", file=sys.stderr)
        return 2
    print(instructions.table(phases), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return check(args)
    if args.command == "count":
        return count(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
