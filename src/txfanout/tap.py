"""``twistd fanout``: options and the service tree."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from . import about, advice, demo, logs
from . import config as configuration
from .accesslog import AccessLog
from .config import ServerConfig
from .demo import DEMO_PORT
from .admin import admin_site
from .gcpacer import GcPacer
from .gateway import Gateway
from .site import GatewaySite
from .lifecycle import DRAIN_MARGIN_S, Lifecycle
from .memory import TRACEMALLOC, AllocationSites
from .listeners import (
    EndpointError,
    Listener,
    bind_listening_socket,
    cannot_listen,
    inherited_endpoint,
    server_endpoint,
    share_fairly,
    shift_port,
)
from .sdnotify import Notifier
from .warmup import warm_up
from .workers import LISTEN_FD, WorkerPool, worker_count

log = Logger()

MAX_WARMUP = 10_000  # requests (1,000 took 10-12 s on a slow core; see docs/pypy.rst)

MANUAL = """
SIGNALS
  SIGHUP    Re-read and validate the --config file. A bad file is refused: each
            error is logged with its key, and the old configuration keeps
            serving. A good one is used at once by new requests; requests in
            flight finish on the one they started with. Options given on the
            command line still win. A changed server.listen or server.admin
            needs a restart (the log says so).
  SIGTERM   Drain, then exit 0: /readyz answers 503, the public listener
  SIGINT    closes, requests in flight finish (at most server.deadline_ms plus
            1 s), the partner connections are closed. A second signal stops
            at once.

SEVERAL PROCESSES ON ONE PORT
  --workers N starts N worker processes (0: one per CPU) that share the
  public socket, bound by the parent (tcp:, tcp6:) or passed by systemd
  (systemd:domain=INET:name=NAME). The parent restarts a worker that exits,
  forwards SIGHUP, SIGTERM and SIGINT, and notifies systemd for them all.
  With systemd socket activation instead, run txfanout@I.service instances
  that share txfanout.socket, each with --worker-index I. Either way worker
  I serves its admin face (/healthz, /readyz, /metrics) on the admin port
  + I: scrape every worker's port and sum in Prometheus. --max-inflight is
  per process. A partner's max_rps is shared: --workers N gives each worker
  --worker-count N (max_rps / N each); give txfanout@I instances
  --worker-count N yourself.

ENVIRONMENT
  NOTIFY_SOCKET  Set by systemd (Type=notify): READY=1 once listening,
                 STATUS= (in flight, requests/s) every 5 s, RELOADING=1 and
                 READY=1 around a reload, STOPPING=1 when draining.
  WATCHDOG_USEC  Set by systemd (WatchdogSec=): WATCHDOG=1 every half of it,
  WATCHDOG_PID   from the reactor; none when WATCHDOG_PID is another process.
  LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID
                 Sockets passed by systemd, for --listen systemd:....

FILES
  /etc/txfanout/txfanout.toml  The configuration (the units' --config);
                 check it with: txfanout check-config PATH. A starter that
                 calls the demo partners: txfanout init-config PATH.

EXIT STATUS
  0 after a drain (SIGTERM, SIGINT); 1 on bad options, a bad configuration
  or an address that cannot be bound.

EXAMPLES
  twistd -n --pidfile= fanout --demo
  twistd -n --pidfile= fanout --demo --config txfanout.toml  (after init-config)
  twistd -n --pidfile= fanout --config /etc/txfanout/txfanout.toml
  twistd -n --pidfile= fanout --config txfanout.toml --workers 0
  systemd-socket-activate -l 8080 --fdname=web -- twistd -n --pidfile= \\
      fanout --config txfanout.toml --listen systemd:domain=INET:name=web
"""


HELP = "see: twistd fanout --help"
DEFAULTS = ServerConfig()


def _whole_number(option: str, example: int, low: int | None = None) -> Any:
    """A coercer for ``--option N`` whose refusal names the option and the fix."""
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{option} takes a whole number, e.g. --{option} "
                                   f"{example} (not {value!r})") from None
        if low is not None and number < low:
            raise usage.UsageError(f"--{option} must be at least {low} (not {number})")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


# The options that name a config key: option -> key in [server].
SERVER_OPTIONS = {"listen": "listen", "admin": "admin", "deadline-ms": "deadline_ms",
                  "max-inflight": "max_inflight"}


def _option_names(errors: list[str], given: list[str]) -> list[str]:
    """Config errors, each about a key an option set named with it too:
    ``server.deadline_ms (--deadline-ms): must be ...``."""
    named = []
    for line in errors:
        for option in given:
            prefix = f"server.{SERVER_OPTIONS[option]}:"
            if line.startswith(prefix):
                line = f"{prefix[:-1]} (--{option}):{line[len(prefix):]}"
        named.append(line)
    return named


class Options(usage.Options):
    """Options of ``twistd fanout``; each wins over the config file."""

    synopsis = "[options]"
    longdesc = ("Scatter-gather HTTP gateway: POST /ROUTE fans out to the route's partners "
                "and answers with every partner's outcome. Give --config PATH, or --demo to "
                "run with built-in loopback partners. An option that names a config key "
                "(\"Config: ...\") wins over the file, also after a reload; the sections "
                "below say how the daemon behaves.")
    optFlags = [
        ["demo", None, "Start built-in demo partners on loopback; without --config, "
                       "also use a demo config that calls them (txfanout init-config "
                       "writes it to a file of your own)."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file; SIGHUP re-reads it."],
        ["listen", None, None, "Public endpoint (Twisted endpoint string), e.g. "
                               "tcp:8080:interface=127.0.0.1 or systemd:domain=INET:name=web. "
                               f"Config: server.listen, default {DEFAULTS.listen}."],
        ["admin", None, None, "Admin endpoint (/metrics, /healthz, /readyz, /debug/). "
                              f"Config: server.admin, default {DEFAULTS.admin}."],
        ["deadline-ms", None, None, "Budget per inbound request in ms. Config: "
                                    f"server.deadline_ms, default {DEFAULTS.deadline_ms}.",
         _whole_number("deadline-ms", DEFAULTS.deadline_ms)],
        ["max-inflight", None, None, "Cap on requests being served at once, per process. "
                                     f"Config: server.max_inflight, default "
                                     f"{DEFAULTS.max_inflight}.",
         _whole_number("max-inflight", DEFAULTS.max_inflight)],
        ["demo-port", None, DEMO_PORT, "Loopback port of the demo partners (with --demo).",
         _whole_number("demo-port", DEMO_PORT)],
        ["workers", None, 1, "Serve with N worker processes sharing the public socket "
                             "(0: one per CPU; 1: this process serves).",
         _whole_number("workers", 2, low=0)],
        ["worker-index", None, None, "This process is worker I of a group sharing one "
                                     "socket: its admin face listens on the admin port + I "
                                     "(set by --workers and txfanout@I.service).",
         _whole_number("worker-index", 0, low=0)],
        ["worker-count", None, None, "This process is one of N sharing the partners' "
                                     "max_rps: it calls each at most max_rps / N a second "
                                     "(set by --workers; give it to txfanout@I instances).",
         _whole_number("worker-count", 2, low=1)],
        ["inherit-fd", None, None, "Serve the listening socket at this file descriptor "
                                   "instead of --listen (set by --workers).",
         _whole_number("inherit-fd", 3, low=0)],
        ["warmup", None, 0, "Before the public port accepts and the daemon reports ready, "
                            "send N requests through a throwaway gateway on loopback, so "
                            "that PyPy's JIT has compiled the request path (0: off; on "
                            "PyPy, 1000).",
         _whole_number("warmup", 1000, low=0)],
        ["tracemalloc", None, 0, "Trace allocations (slower) and show the top N allocation "
                                 "sites in the admin face's /debug/memory; 0: off.",
         _whole_number("tracemalloc", 25)],
    ]

    def getUsage(self, width: int | None = None) -> str:
        return super().getUsage(width) + MANUAL

    def opt_version(self) -> None:
        """Print txfanout's version (and the Python and Twisted it runs on), then exit."""
        print(about.version_line())
        sys.exit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse; under twistd (a parent), a refusal is its message and exit
        status 1, not the manual (twistd would print all of it first)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:  # called by a program (the tests): let it see why
                raise
            raise SystemExit(f"twistd fanout: {e}\n{HELP}") from None

    def postOptions(self) -> None:
        self.overrides = {"listen": self["listen"], "admin": self["admin"],
                          "deadline_ms": self["deadline-ms"], "max_inflight": self["max-inflight"]}
        if not 0 < self["demo-port"] < 65536:
            raise usage.UsageError("--demo-port must be from 1 to 65535")
        if self["warmup"] > MAX_WARMUP:
            raise usage.UsageError(f"--warmup must be at most {MAX_WARMUP} (not {self['warmup']})")
        if not 0 <= self["tracemalloc"] <= 1000:
            raise usage.UsageError("--tracemalloc must be from 0 to 1000")
        if self["tracemalloc"] and not TRACEMALLOC:
            raise usage.UsageError("--tracemalloc needs the tracemalloc module, "
                                   "which this interpreter (PyPy) does not have")
        logs.prefer_journal(self.parent)
        try:
            if self["config"]:
                raw = configuration.read(self["config"])
            elif self["demo"]:
                raw = demo.demo_config(f"http://127.0.0.1:{self['demo-port']}")
            else:
                raise usage.UsageError("give --config PATH (txfanout init-config PATH writes "
                                       "a starter), or --demo to try the built-in demo "
                                       "partners")
            self.config = configuration.parse(
                configuration.with_server_overrides(raw, self.overrides))
            self.access_log = AccessLog.from_config(self.config.log)
        except configuration.ConfigError as e:
            given = [o for o in SERVER_OPTIONS if self[o] is not None]
            where = f" ({self['config']})" if self["config"] else ""
            raise usage.UsageError(f"invalid configuration{where}:\n  "
                                   + "\n  ".join(_option_names(e.errors, given)))
        self.workers = worker_count(self["workers"])
        if self["workers"] != 1 and (self["demo"] or not self["config"]):
            raise usage.UsageError("--workers needs --config (workers re-read it on SIGHUP); "
                                   "--demo runs in one process")
        if self["workers"] != 1 and (self["worker-index"] is not None
                                     or self["inherit-fd"] is not None
                                     or self["worker-count"] is not None):
            raise usage.UsageError("--workers starts workers; --worker-index, --worker-count "
                                   "and --inherit-fd are for the workers themselves")
        try:
            self.admin_endpoint = shift_port(self.config.server.admin, self["worker-index"] or 0)
            for index in range(self.workers if self["workers"] != 1 else 0):
                shift_port(self.config.server.admin, index)
        except EndpointError as e:
            raise usage.UsageError(f"server.admin: {e}")

    def reload_config(self) -> Any:
        """What SIGHUP calls: the file re-read with these options applied;
        None when there is no file (--demo alone)."""
        path, overrides = self["config"], self.overrides
        if not path:
            return None
        return lambda: configuration.load(path, overrides)

    def worker_args(self, index: int) -> list[str]:
        """``twistd`` arguments of worker ``index`` (after ``--nodaemon``)."""
        args = ["fanout", "--config", os.path.abspath(self["config"]),
                "--worker-index", str(index), "--worker-count", str(self.workers),
                "--inherit-fd", str(LISTEN_FD)]
        for name in ("listen", "admin", "deadline-ms", "max-inflight"):
            if self[name] is not None:
                args += [f"--{name}", str(self[name])]
        if self["warmup"]:
            args += ["--warmup", str(self["warmup"])]
        return args


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config = options.config
    for line in advice.warnings(config):
        log.warn("{warning}", warning=line)
    if options["workers"] != 1:
        try:
            listen_socket = bind_listening_socket(reactor, config.server.listen)
        except EndpointError as e:
            raise SystemExit(f"txfanout: {e}")
        server = config.server
        budget = (server.drain_grace_ms + server.deadline_ms) / 1000.0 + DRAIN_MARGIN_S
        return WorkerPool(reactor, options.workers, listen_socket, options.worker_args,
                          Notifier.from_environment(), budget)

    top = service.MultiService()
    if options["demo"]:
        DemoPartners(reactor, options["demo-port"]).setServiceParent(top)
    try:
        if options["inherit-fd"] is not None:
            endpoint = inherited_endpoint(reactor, options["inherit-fd"])
        else:
            endpoint = server_endpoint(reactor, config.server.listen)
        admin_endpoint = server_endpoint(reactor, options.admin_endpoint)
    except (EndpointError, OSError) as e:
        raise SystemExit(f"txfanout: {e}")
    gateway = Gateway(reactor, config, options["worker-count"] or 1)
    gateway.access_log = options.access_log
    sites = AllocationSites(options["tracemalloc"]) if options["tracemalloc"] else None
    GatewayService(gateway).setServiceParent(top)
    for watcher in (gateway.overdue, sites, GcPacer(reactor)):
        if watcher is not None:
            Running(watcher).setServiceParent(top)
    site = GatewaySite(gateway)
    where = (f"fd {options['inherit-fd']}" if options["inherit-fd"] is not None
             else config.server.listen)
    public = Listener("public", endpoint, site, where, "--listen (or server.listen)")
    if options["inherit-fd"] is not None or config.server.listen.startswith("systemd:"):
        public.ready.addCallback(share_fairly)  # other processes accept on it too
    public.ready.addCallback(site.listening)  # so that it can stop accepting
    public.setServiceParent(top)
    admin = Listener("admin", admin_endpoint, admin_site(gateway, sites),
                     options.admin_endpoint, "--admin (or server.admin)")
    admin.setServiceParent(top)
    Lifecycle(reactor, gateway, public, admin, options.reload_config(),
              Notifier.from_environment(),
              warm_up=(lambda: warm_up(reactor, options["warmup"])) if options["warmup"] else None,
              ).setServiceParent(top)
    return top


class Running(service.Service):
    """Runs anything with ``start()`` and ``stop()`` while the daemon runs."""

    def __init__(self, thing: Any) -> None:
        self.thing = thing

    def startService(self) -> None:
        super().startService()
        self.thing.start()

    def stopService(self) -> None:
        super().stopService()
        self.thing.stop()


class GatewayService(service.Service):
    """Starts the gateway's background work; closes the pool at the end."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def startService(self) -> None:
        super().startService()
        self.gateway.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.gateway.close()


class DemoPartners(service.Service):
    """The demo partners' listener."""

    def __init__(self, reactor: Any, port: int) -> None:
        self._reactor = reactor
        self._port_number = port
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        try:
            self._port = demo.listen(self._reactor, self._port_number)
        except CannotListenError as e:
            raise SystemExit(cannot_listen(f"127.0.0.1:{self._port_number}", "demo partners",
                                           e, "--demo-port")) from None

    def stopService(self) -> Any:
        super().stopService()
        return self._port.stopListening() if self._port else None
