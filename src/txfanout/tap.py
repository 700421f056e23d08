"""``twistd fanout``: options and the service tree."""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.python import usage

from . import config as configuration
from . import demo
from .admin import admin_site
from .gateway import Gateway, GatewaySite


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
    ]

    def postOptions(self) -> None:
        overrides = {"listen": self["listen"], "admin": self["admin"],
                     "deadline_ms": self["deadline-ms"], "max_inflight": self["max-inflight"]}
        if not 0 < self["demo-port"] < 65536:
            raise usage.UsageError("--demo-port must be from 1 to 65535")
        try:
            if self["config"]:
                raw = configuration.read(self["config"])
            elif self["demo"]:
                raw = demo.demo_config(f"http://127.0.0.1:{self['demo-port']}")
            else:
                raise usage.UsageError("give --config PATH, or --demo to try the built-in demo")
            self.config = configuration.parse(configuration.with_server_overrides(raw, overrides))
        except configuration.ConfigError as e:
            raise usage.UsageError("invalid configuration:\n  " + "\n  ".join(e.errors))


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config = options.config
    top = service.MultiService()
    if options["demo"]:
        DemoPartners(reactor, options["demo-port"]).setServiceParent(top)
    gateway = Gateway(reactor, config)
    GatewayService(gateway).setServiceParent(top)
    strports.service(config.server.listen, GatewaySite(gateway)).setServiceParent(top)
    strports.service(config.server.admin, admin_site(gateway)).setServiceParent(top)
    return top


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
        self._port = demo.listen(self._reactor, self._port_number)

    def stopService(self) -> Any:
        super().stopService()
        return self._port.stopListening() if self._port else None
