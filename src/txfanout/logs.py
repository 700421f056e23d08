"""Log lines for journald and for humans: one line per event.

``observer()`` is a log observer factory for ``twistd --logger
txfanout.logs.observer``. Under systemd (stdout is the journal stream named
by ``$JOURNAL_STREAM``) it writes ``<priority>namespace: message``, without
a timestamp (journald adds its own) and with the syslog priority journald
reads from the ``<N>`` prefix; elsewhere ``timestamp [namespace#level]
message``. Either way a multi-line event (a traceback) stays on one line,
its line breaks written as ``\\n``.

``twistd fanout`` picks this observer by itself under systemd when no
``--logger``, ``--logfile`` or ``--syslog`` is given.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    eventAsText,
    formatTime,
)

_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
             LogLevel.critical: 2}


def _text(event: LogEvent) -> str:
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    return text.rstrip("\n").replace("\\", "\\\\").replace("\n", "\\n")


def _system(event: LogEvent) -> str:
    return str(event.get("log_system") or event.get("log_namespace") or "-")


def journal_line(event: LogEvent) -> str | None:
    """``<6>namespace: message``: for journald, which stamps the time."""
    text = _text(event)
    if not text:
        return None
    priority = _PRIORITY.get(event.get("log_level"), 6)
    return f"<{priority}>{_system(event)}: {text}\n"


def text_line(event: LogEvent) -> str | None:
    """``2024-05-01T12:00:00+0000 [namespace#info] message``."""
    text = _text(event)
    if not text:
        return None
    name = getattr(event.get("log_level"), "name", "-")
    return f"{formatTime(event.get('log_time'))} [{_system(event)}#{name}] {text}\n"


def on_journal(stream: IO[Any] | None = None) -> bool:
    """Whether ``stream`` (stdout) is the journal stream systemd gave us."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat((stream or sys.stdout).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def observer(stream: IO[Any] | None = None) -> ILogObserver:
    """One line per event on ``stream`` (stdout), journald's way when it is
    the journal."""
    out = stream or sys.stdout
    return FileLogObserver(out, journal_line if on_journal(out) else text_line)


def prefer_journal(server_options: Any) -> None:
    """Under systemd, make twistd log with :func:`observer` unless told
    otherwise (``--logger``, ``--logfile``, ``--syslog``)."""
    if server_options is None or not on_journal():
        return
    if server_options.get("logger") or server_options.get("logfile") \
            or server_options.get("syslog"):
        return
    server_options["logger"] = "txfanout.logs.observer"
