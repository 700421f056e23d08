"""One gateway process's life under a service manager.

- Ready: ``READY=1`` once every listener is up, then ``STATUS=`` every few
  seconds (in flight, requests/s) and ``WATCHDOG=1`` at half of
  ``WATCHDOG_USEC``, both from the reactor, so a wedged reactor stops them.
- SIGHUP: re-read and validate the configuration file; a bad one is refused
  (each error logged with its key) and the old one keeps serving; a good one
  is swapped in at once (``Gateway.reconfigure``).
- SIGTERM / SIGINT: drain. ``/readyz`` turns 503, the public listener
  closes, requests in flight finish (each is bounded by its deadline), then
  the reactor stops, the pool is closed, and the process exits 0. A second
  signal stops at once.

Twisted installs no SIGHUP handler, and its SIGTERM handler makes twistd
re-raise the signal at exit (exit status -15); these handlers replace it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from types import FrameType
from typing import Any, Callable

from twisted.application import service
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, TimeoutError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import Config, ConfigError
from .gateway import Gateway
from .listeners import Listener
from .memory import freeze_startup
from .sdnotify import Notifier, watchdog_interval
from .timers import Loops
from .words import plural

log = Logger()

DRAIN_MARGIN_S = 1.0
WARMUP_TIMEOUT_S = 120.0  # a warm-up that takes longer is given up: the daemon serves cold
# What systemd is asked to wait for READY beyond TimeoutStartSec= while the
# daemon warms up: the warm-up's own bound, and a margin to report ready after.
WARMUP_START_S = WARMUP_TIMEOUT_S + 10.0
STATUS_INTERVAL_S = 5.0
RESTART_KEYS = ("listen", "admin")


def describe(port: Any, fallback: str) -> str:
    """``host:port`` of a listening port (``fallback`` when it has none)."""
    if port is not None:
        address = port.getHost()
        if hasattr(address, "port"):
            return f"{address.host}:{address.port}"
    return fallback



def take_signals(reactor: Any, handler: Callable[[int], Any]) -> None:
    """SIGHUP, SIGTERM and SIGINT go to ``handler(signum)`` in the reactor.
    Call it once the reactor runs: Twisted installs its own handlers while
    starting, and ours must replace them. A signal handler may only hand
    work over to the reactor, so it does no more than that."""
    def on_signal(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(handler, signum)

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

class Lifecycle(service.Service):
    """Readiness, reload, drain and service-manager notifications for one
    gateway process."""

    def __init__(self, reactor: Any, gateway: Gateway, public: Listener, admin: Listener,
                 reload_config: Callable[[], Config] | None, notifier: Notifier,
                 environ: dict[str, str] | None = None,
                 warm_up: Callable[[], Deferred[Any]] | None = None) -> None:
        self._reactor = reactor
        self._warm_up_with = warm_up
        self.gateway = gateway
        self.public = public
        self.admin = admin
        self._reload_config = reload_config
        self.notifier = notifier
        environ = dict(os.environ) if environ is None else environ
        self._watchdog_s = watchdog_interval(environ, os.getpid())
        self._loops = Loops(reactor)
        self._last_total = 0
        self._last_time = 0.0
        self.draining = False
        self.drained: Deferred[None] = Deferred()

    # -- start --

    def startService(self) -> None:
        super().startService()
        # After startup: the reactor installs its own SIGTERM/SIGINT handlers
        # "during startup"; ours must come after to replace them.
        self._reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        take_signals(self._reactor, self.handle_signal)
        self._start()

    def _start(self) -> Deferred[None]:
        """Ready once both listeners are up and the warm-up (``--warmup``,
        warmup.py) is over; the public port accepts nothing before that."""
        started: list[Deferred[Any]] = [self.public.ready, self.admin.ready, self._warm_up()]
        return gatherResults(started).addCallback(self._ready)

    def _warm_up(self) -> Deferred[Any]:
        if self._warm_up_with is None:
            return succeed(None)
        # The loop's lag meanwhile is the warm-up's: the gateway's own, which
        # steers its in-flight limit, is measured from when it serves.
        lag = self.gateway.lag
        lag.stop()
        # A warm-up may outlast the unit's TimeoutStartSec= on a slow or
        # busy host: it is bounded here, not by systemd killing the daemon.
        self.notifier.starting_slowly(WARMUP_START_S, "warming up before serving")
        warmed = self._warm_up_with()
        warmed.addTimeout(WARMUP_TIMEOUT_S, self._reactor)

        def failed(failure: Failure) -> None:
            log.warn("warm-up failed, serving without it: {error}",
                     error=failure.getErrorMessage())

        warmed.addErrback(failed)
        warmed.addCallback(lambda _: lag.start())
        self.public.factory.accept_after(warmed)
        return warmed

    def _ready(self, _: Any) -> None:
        server = self.gateway.snapshot.config.server
        self._last_total = self.gateway.admission.admitted_total
        self._last_time = self._reactor.seconds()
        if self.draining:
            return
        freeze_startup()
        self.gateway.ready = True
        log.info("ready: pid {pid}, serving {listen}, admin {admin}", pid=os.getpid(),
                 listen=describe(self.public.port, server.listen),
                 admin=describe(self.admin.port, server.admin))
        self.notifier.ready(self.status_line())
        if self.notifier.enabled:
            self._loops.start(self._report_status, STATUS_INTERVAL_S, now=False)
            if self._watchdog_s is not None:
                self._loops.start(self.notifier.watchdog, self._watchdog_s, now=True)

    def stopService(self) -> Any:
        super().stopService()
        self._loops.stop()
        self.notifier.close()

    # -- status --

    def status_line(self) -> str:
        """``serving: N in flight, R req/s`` (R over the last interval)."""
        now, total = self._reactor.seconds(), self.gateway.admission.admitted_total
        elapsed = now - self._last_time
        rate = (total - self._last_total) / elapsed if elapsed > 0 else 0.0
        self._last_total, self._last_time = total, now
        state = "draining" if self.draining else "serving"
        return f"{state}: {self.gateway.admission.admitted} in flight, {rate:.1f} req/s"

    def _report_status(self) -> None:
        self.notifier.status(self.status_line())

    # -- signals --

    def handle_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload()
        else:
            log.info("received {name}", name=signal.Signals(signum).name)
            self.drain()

    # -- reload --

    def reload(self) -> bool:
        """Re-read the configuration; True when the new one is now served."""
        if self.draining:
            log.info("reload ignored: draining")
            return False
        if self._reload_config is None:
            log.warn("reload ignored: no --config file to re-read")
            return False
        self.notifier.reloading()
        started = self._reactor.seconds()
        try:
            config = self._reload_config()
        except ConfigError as e:
            for line in e.errors:
                log.error("reload refused: {error}", error=line)
            log.error("reload refused ({errors}); still serving the previous "
                      "configuration", errors=plural(len(e.errors), "error"))
            self.notifier.ready(f"reload refused ({plural(len(e.errors), 'error')}); "
                                + self.status_line())
            return False
        config = self._keep_bound_addresses(config)
        self.gateway.reconfigure(config)
        log.info("reloaded: {partners}, {routes} in {ms:.1f} ms",
                 partners=plural(len(config.partners), "partner"),
                 routes=plural(len(config.routes), "route"),
                 ms=(self._reactor.seconds() - started) * 1000.0)
        self.notifier.ready(self.status_line())
        return True

    def _keep_bound_addresses(self, config: Config) -> Config:
        """``config`` with the listen/admin addresses in use: changing them
        needs a restart, which the log says."""
        running = self.gateway.snapshot.config.server
        kept = {}
        for key in RESTART_KEYS:
            old, new = getattr(running, key), getattr(config.server, key)
            if old != new:
                log.warn("reload: server.{key} changed from {old} to {new}; restart to apply "
                         "it (still on {old})", key=key, old=old, new=new)
                kept[key] = old
        if not kept:
            return config
        return dataclasses.replace(config, server=dataclasses.replace(config.server, **kept))

    # -- drain --

    def drain(self) -> Deferred[None]:
        """Leave the load balancer's rotation, stop accepting, let requests
        in flight finish (for at most the deadline plus a margin), then stop
        the reactor. ``drained`` fires just before it stops.

        With ``server.drain_grace_ms``, /readyz turns 503 at once but the
        gateway serves on for that long, each answer closing its connection,
        so that a load balancer that checks /readyz takes new requests
        elsewhere before any is refused."""
        if self.draining:
            log.warn("second stop signal: stopping now, {count} in flight",
                     count=plural(self.gateway.admission.admitted, "request"))
            self._stop_reactor()
            return self.drained
        self.draining = True
        self.gateway.ready = False
        self.notifier.stopping(self.status_line())
        grace_s = self.gateway.snapshot.config.server.drain_grace_ms / 1000.0
        if grace_s:
            self.gateway.closing = True
            log.info("draining: /readyz is 503; serving {grace:.1f} s more, each answer "
                     "closing its connection", grace=grace_s)
            self._reactor.callLater(grace_s, self._stop_serving)
        else:
            self._stop_serving()
        return self.drained

    def _stop_serving(self) -> None:
        self.gateway.admission.drain()
        started = self._reactor.seconds()
        budget = self.gateway.snapshot.config.server.deadline_ms / 1000.0 + DRAIN_MARGIN_S
        log.info("draining: /readyz is 503; {count} in flight, waiting up to "
                 "{budget:.1f} s", count=plural(self.gateway.admission.admitted, "request"),
                 budget=budget)

        def closed(_: Any) -> Deferred[None]:
            log.info("draining: no longer accepting connections")
            left = max(0.0, budget - (self._reactor.seconds() - started))
            return self.gateway.admission.idle().addTimeout(left, self._reactor)

        def finished(result: Any) -> None:
            ms = (self._reactor.seconds() - started) * 1000.0
            if isinstance(result, Failure):
                if result.check(TimeoutError):
                    log.warn("drain: {count} still in flight after {ms:.0f} ms; "
                             "stopping anyway",
                             count=plural(self.gateway.admission.admitted, "request"), ms=ms)
                else:
                    log.failure("drain failed; stopping", failure=result)
            else:
                log.info("drained in {ms:.0f} ms", ms=ms)
            self.drained.callback(None)
            self._stop_reactor()

        self.public.stop_accepting().addCallback(closed).addBoth(finished)

    def _stop_reactor(self) -> None:
        try:
            self._reactor.stop()
        except net_error.ReactorNotRunning:
            pass
