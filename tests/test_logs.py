"""Log lines, the access log and its configuration, the lag probe."""

from __future__ import annotations

import io
import json
import os

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from txfanout import logs, tap
from txfanout.accesslog import AccessLog
from txfanout.config import ConfigError, LogConfig, parse
from txfanout.lag import ReactorLag

from .configs import route_config


def one(partner, path, **extra):
    return {"url": partner.url(path), **extra}


def _failure() -> Failure:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        return Failure()


EVENT = {"log_format": "call {name} failed", "name": "dsp-a", "log_level": LogLevel.error,
         "log_namespace": "txfanout.gateway", "log_time": 0.0}


def test_journal_lines_have_a_priority_and_no_timestamp():
    line = logs.journal_line({**EVENT, "log_failure": _failure()})
    assert line.startswith("<3>txfanout.gateway: call dsp-a failed\\nTraceback")
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "ValueError: boom\\nsecond line" in line
    assert logs.journal_line({**EVENT, "log_level": LogLevel.warn}).startswith("<4>")
    assert logs.journal_line({"log_level": LogLevel.info}) is None  # nothing to say


def test_text_lines_have_a_timestamp_and_stay_on_one_line():
    line = logs.text_line({**EVENT, "log_failure": _failure()})
    assert line.startswith("1970-01-01T00:00:00+0000 [txfanout.gateway#error] call dsp-a failed")
    assert line.count("\n") == 1


def test_observer_writes_journal_lines_only_to_the_journal_stream(tmp_path, monkeypatch):
    with open(tmp_path / "out", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.on_journal(stream)
        logs.observer(stream)(EVENT)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not logs.on_journal(stream)
        logs.observer(stream)(EVENT)
    first, second = (tmp_path / "out").read_text().splitlines()
    assert first == "<3>txfanout.gateway: call dsp-a failed"
    assert second.endswith("[txfanout.gateway#error] call dsp-a failed")
    assert not logs.on_journal(io.StringIO())  # no file descriptor: not the journal


def test_twistd_logs_to_the_journal_by_itself_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(logs, "on_journal", lambda stream=None: True)
    chosen = {"logger": None, "logfile": None, "syslog": False}
    logs.prefer_journal(chosen)
    assert chosen["logger"] == "txfanout.logs.observer"
    told = {"logger": None, "logfile": "/var/log/fanout.log", "syslog": False}
    logs.prefer_journal(told)
    assert told["logger"] is None
    monkeypatch.setattr(logs, "on_journal", lambda stream=None: False)
    elsewhere = {"logger": None, "logfile": None, "syslog": False}
    logs.prefer_journal(elsewhere)
    assert elsewhere["logger"] is None


def test_twistd_command_line_picks_the_journal_observer(monkeypatch):
    from twisted.scripts.twistd import ServerOptions

    monkeypatch.setattr(logs, "on_journal", lambda stream=None: True)
    options = ServerOptions()
    options.parseOptions(["--nodaemon", "fanout", "--demo"])
    assert options["logger"] is logs.observer
    options = ServerOptions()
    options.parseOptions(["--nodaemon", "--logfile", "-", "fanout", "--demo"])
    assert options["logger"] is None


def test_log_keys_are_validated():
    base = route_config({"a": {"url": "http://127.0.0.1:1/"}})
    assert parse(base).log == LogConfig()
    config = parse({**base, "log": {"access_log": "/tmp/a.log", "access_log_sample": 0.01}})
    assert config.log == LogConfig("/tmp/a.log", 0.01)
    assert parse({**base, "log": {"access_log_sample": 1}}).log.access_log_sample == 1.0
    with pytest.raises(ConfigError) as e:
        parse({**base, "log": {"access_log": 5, "access_log_sample": 0, "sample": 1}})
    assert e.value.errors == [
        "log.sample: unknown key",
        'log.access_log: must be a file path (or "" for none)',
        "log.access_log_sample: must be a number greater than 0 and at most 1",
    ]
    with pytest.raises(ConfigError, match="log.access_log_sample: must be a number"):
        parse({**base, "log": {"access_log_sample": 1.5}})


def test_an_access_log_that_cannot_be_opened_is_a_config_error(tmp_path):
    missing = tmp_path / "no-such-dir" / "access.log"
    with pytest.raises(ConfigError, match=r"log.access_log: cannot open .*no-such-dir"):
        AccessLog.from_config(LogConfig(str(missing)))
    assert AccessLog.from_config(LogConfig()) is None
    path = tmp_path / "c.toml"
    path.write_text(f'[log]\naccess_log = "{missing}"\n[partners.a]\nurl = "http://127.0.0.1:1/"\n'
                    '[routes.bid]\npartners = ["a"]\n')
    o = tap.Options()
    with pytest.raises(UsageError, match="log.access_log: cannot open"):
        o.parseOptions(["--config", str(path)])


@pytest_twisted.ensureDeferred
async def test_access_log_records_each_request(partner, make_gateway, tmp_path):
    gw = make_gateway(route_config({"a": one(partner, "/ok"), "b": one(partner, "/status/500")}))
    path = tmp_path / "access.log"
    gw.gateway.access_log = AccessLog(str(path))
    await gw.post(headers={"X-Request-Id": "req-1"})
    await gw.post("/nope")
    ok, missing = (json.loads(line) for line in path.read_text().splitlines())
    assert ok["id"] == "req-1" and ok["route"] == "bid" and ok["status"] == 200
    assert ok["elapsed_ms"] >= 0 and ok["ts"] > 1.6e9
    assert [(p["partner"], p["outcome"], p["status"]) for p in ok["partners"]] == \
        [("a", "ok", 200), ("b", "http_error", 500)]
    assert missing == {**missing, "id": None, "route": "unknown", "status": 404,
                       "partners": None}


def test_requests_refused_on_the_wire_are_logged_and_counted_not_timed(net, tmp_path):
    gw = net.gateway(route_config({"a": one(net.partner(), "/ok")}, request_timeout_ms=200))
    path = tmp_path / "access.log"
    gw.gateway.access_log = AccessLog(str(path))
    for data in (b"POST /bid HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                 b"Content-Length: 2\r\n\r\n{}",  # 400: two lengths
                 b"POST /bid HTTP/1.1\r\nHost: x\r\n",  # 408: never ends
                 b"\x16\x03\x01 not http\r\n\r\n"):  # 400: no request line
        client = gw.client(data)
        net.until(lambda: client.closed)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["route"], r["status"], r["id"], r["partners"]) for r in lines] == [
        ("bid", 400, None, None), ("bid", 408, None, None), ("unknown", 400, None, None)]
    assert lines[1]["elapsed_ms"] == 200.0  # from the request's first byte
    metrics = gw.gateway.metrics.registry
    assert metrics.get_sample_value("txfanout_requests_total",
                                    {"route": "bid", "code": "400"}) == 1
    assert metrics.get_sample_value("txfanout_requests_total",
                                    {"route": "bid", "code": "408"}) == 1
    assert metrics.get_sample_value("txfanout_requests_total",
                                    {"route": "unknown", "code": "400"}) == 1
    assert metrics.get_sample_value("txfanout_request_duration_seconds_count",
                                    {"route": "bid"}) == 0


@pytest_twisted.ensureDeferred
async def test_access_log_is_sampled(partner, make_gateway, tmp_path):
    gw = make_gateway(route_config({"a": one(partner, "/ok")}))
    path = tmp_path / "access.log"
    draws = iter([0.05, 0.5, 0.09, 0.1])
    gw.gateway.access_log = AccessLog(str(path), sample=0.1, draw=draws.__next__)
    for i in range(4):
        await gw.post(headers={"X-Request-Id": f"r{i}"})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["r0", "r2"]
    # Reopened after a rotation: the next lines go to the new file.
    path.rename(tmp_path / "access.log.1")
    gw.gateway.access_log.reopen()
    gw.gateway.access_log.sample = 1.0
    await gw.post(headers={"X-Request-Id": "after"})
    assert json.loads(path.read_text())["id"] == "after"


def test_reactor_lag_measures_how_late_the_probe_runs():
    clock = Clock()
    lag = ReactorLag(clock, 0.1)
    lag.start()
    lag.start()  # idempotent
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.1)
    assert lag.lag == 0.0
    clock.advance(0.35)  # the reactor was busy: the probe due at 0.2 ran at 0.45
    assert lag.lag == pytest.approx(0.25)
    clock.advance(0.1)
    assert lag.lag == 0.0
    lag.stop()
    assert not clock.getDelayedCalls() and not lag.running
    with pytest.raises(ValueError):
        ReactorLag(clock, 0)


def test_tracemalloc_option_is_bounded():
    o = tap.Options()
    with pytest.raises(UsageError, match="--tracemalloc must be from 0 to 1000"):
        o.parseOptions(["--demo", "--tracemalloc", "-1"])


def test_tracemalloc_option_refused_without_tracemalloc(monkeypatch):
    """As on PyPy, which has no tracemalloc module."""
    monkeypatch.setattr(tap, "TRACEMALLOC", False)
    with pytest.raises(UsageError, match="--tracemalloc needs the tracemalloc module"):
        tap.Options().parseOptions(["--demo", "--tracemalloc", "5"])
    tap.Options().parseOptions(["--demo", "--tracemalloc", "0"])
