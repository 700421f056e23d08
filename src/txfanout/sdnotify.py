"""sd_notify(3) without libsystemd: one AF_UNIX datagram per message.

systemd (``Type=notify``) gives the service ``NOTIFY_SOCKET``: a path, or an
abstract-namespace name written with a leading ``@``. A message is a few
``KEY=value`` lines: ``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
``WATCHDOG=1``, ``STATUS=free text``, ``EXTEND_TIMEOUT_USEC=N``. Without
``NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same outside
systemd.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping

from twisted.logger import Logger

log = Logger()


def socket_address(name: str) -> str | bytes:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value: ``@name`` is the
    abstract namespace (a leading NUL byte), anything else a path."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")
    return name


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, or
    None when there is no watchdog for this process (unset, malformed, zero,
    or ``WATCHDOG_PID`` names another process)."""
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends notifications to the service manager, if there is one.

    Sending never blocks and never raises: a full or missing socket loses
    that message (as sd_notify does) and is logged once.
    """

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._address = socket_address(name) if name else None
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "Notifier":
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(a.replace("\n", " ") if a.startswith("STATUS=") else a
                            for a in assignments).encode("utf-8")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(message, self._address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.warn("cannot notify the service manager at {name}: {error}",
                         name=self.name, error=e.strerror or str(e))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def starting_slowly(self, within_s: float, status: str) -> bool:
        """Ask for up to ``within_s`` more to start than ``TimeoutStartSec=``
        allows (the warm-up): systemd then waits for READY that long from now."""
        return self.send(f"EXTEND_TIMEOUT_USEC={round(within_s * 1e6)}", f"STATUS={status}")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}",
                         "STATUS=reloading the configuration")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
