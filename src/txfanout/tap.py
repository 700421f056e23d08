"""``twistd fanout``: options and the service tree."""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.python import usage

from . import config as configuration
from . import demo, logs
from .accesslog import AccessLog
from .admin import admin_site
from .gateway import Gateway, GatewaySite
from .memory import AllocationSites


class Options(usage.Options):
    """Options of ``twistd fanout``; each wins over the config file."""

    synopsis = "[options]"
    longdesc = ("Scatter-gather HTTP gateway: POST /ROUTE fans out to the route's partners "
                "and answers with every partner's outcome. Give --config PATH, or --demo to "
                "run with built-in loopback partners.")
    optFlags = [
        ["demo", None, "Start built-in demo partners on loopback; without --config, "
                       "also use a demo config that calls them."],
    ]
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["listen", None, None, "Public endpoint (Twisted endpoint string). "
                               "Config: server.listen, default tcp:8080."],
        ["admin", None, None, "Admin endpoint. Config: server.admin, "
                              "default tcp:9090:interface=127.0.0.1."],
        ["deadline-ms", None, None, "Budget per inbound request in ms. "
                                    "Config: server.deadline_ms, default 500.", int],
        ["max-inflight", None, None, "Global cap on requests being served. "
                                     "Config: server.max_inflight, default 2000.", int],
        ["demo-port", None, 7100, "Loopback port of the demo partners.", int],
        ["tracemalloc", None, 0, "Trace allocations (slower) and show the top N allocation "
                                 "sites in the admin face's /debug/memory; 0: off.", int],
    ]

    def postOptions(self) -> None:
        overrides = {"listen": self["listen"], "admin": self["admin"],
                     "deadline_ms": self["deadline-ms"], "max_inflight": self["max-inflight"]}
        if not 0 < self["demo-port"] < 65536:
            raise usage.UsageError("--demo-port must be from 1 to 65535")
        if not 0 <= self["tracemalloc"] <= 1000:
            raise usage.UsageError("--tracemalloc must be from 0 to 1000")
        logs.prefer_journal(self.parent)
        try:
            if self["config"]:
                raw = configuration.read(self["config"])
            elif self["demo"]:
                raw = demo.demo_config(f"http://127.0.0.1:{self['demo-port']}")
            else:
                raise usage.UsageError("give --config PATH, or --demo to try the built-in demo")
            self.config = configuration.parse(configuration.with_server_overrides(raw, overrides))
            self.access_log = AccessLog.from_config(self.config.log)
        except configuration.ConfigError as e:
            raise usage.UsageError("invalid configuration:\n  " + "\n  ".join(e.errors))


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config = options.config
    top = service.MultiService()
    if options["demo"]:
        DemoPartners(reactor, options["demo-port"]).setServiceParent(top)
    gateway = Gateway(reactor, config)
    gateway.access_log = options.access_log
    sites = AllocationSites(options["tracemalloc"]) if options["tracemalloc"] else None
    GatewayService(gateway).setServiceParent(top)
    for watcher in (gateway.lag, gateway.overdue, sites):
        if watcher is not None:
            Running(watcher).setServiceParent(top)
    strports.service(config.server.listen, GatewaySite(gateway)).setServiceParent(top)
    strports.service(config.server.admin, admin_site(gateway, sites)).setServiceParent(top)
    Ready(gateway).setServiceParent(top)  # last: started after, stopped before the listeners
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


class Ready(service.Service):
    """The gateway is ready once every listener is up, and no longer ready
    as soon as the daemon starts stopping."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def startService(self) -> None:
        super().startService()
        self.gateway.ready = True

    def stopService(self) -> None:
        self.gateway.ready = False
        super().stopService()


class GatewayService(service.Service):
    """Closes the upstream pool when the daemon stops."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

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
        self._port = demo.listen(self._reactor, self._port_number)

    def stopService(self) -> Any:
        super().stopService()
        return self._port.stopListening() if self._port else None
