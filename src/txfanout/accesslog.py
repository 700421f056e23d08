"""The access log: one JSON line per answered request, optionally sampled.

``{"ts": 1714550000.123, "id": "…", "route": "bid", "status": 200,
"elapsed_ms": 12.3, "partners": [{"partner": "a", "outcome": "ok",
"status": 200, "latency_ms": 3.1}, …]}``; ``id`` and ``partners`` are null
for requests refused before their fan-out (404, 400, 408, 413, 414, 431, 503 …).
"""

from __future__ import annotations

import json
import random
import time
from typing import IO, TYPE_CHECKING, Any, Callable

from .config import LogConfig, ConfigError

if TYPE_CHECKING:
    from .fanout import Fanout


class AccessLog:
    """Appends to ``path``, line-buffered; ``sample`` is the share of
    requests written (``1.0``: all)."""

    def __init__(self, path: str, sample: float = 1.0,
                 draw: Callable[[], float] = random.random) -> None:
        self.path = path
        self.sample = sample
        self._draw = draw
        self._file: IO[str] = self._open()

    @classmethod
    def from_config(cls, config: LogConfig) -> "AccessLog | None":
        """The configured access log, opened, or None; a file that cannot be
        opened is a ConfigError naming ``log.access_log``."""
        if not config.access_log:
            return None
        try:
            return cls(config.access_log, config.access_log_sample)
        except OSError as e:
            raise ConfigError([f"log.access_log: cannot open {config.access_log} "
                               f"({e.strerror or e})"]) from None

    def _open(self) -> IO[str]:
        return open(self.path, "a", buffering=1, encoding="utf-8")

    def request_ended(self, fanout: "Fanout | None", route: str, code: int,
                      elapsed: float | None) -> None:
        if self.sample < 1.0 and self._draw() >= self.sample:
            return
        record: dict[str, Any] = {
            "ts": round(time.time(), 3), "id": None, "route": route, "status": code,
            "elapsed_ms": None if elapsed is None else round(elapsed * 1000.0, 1),
            "partners": None}
        if fanout is not None:
            record["id"] = fanout.request_id
            record["partners"] = [
                {"partner": r.partner, "outcome": r.outcome, "status": r.status,
                 "latency_ms": r.latency_ms}
                for r in fanout.results if r is not None]
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it)."""
        old, self._file = self._file, self._open()
        old.close()

    def close(self) -> None:
        self._file.close()
