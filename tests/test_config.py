"""Configuration: every bad key is named with its reason."""

from __future__ import annotations

import subprocess
import sys

import pytest

from txfanout.__main__ import main
from txfanout.config import ConfigError, load, parse

GOOD = """
[server]
deadline_ms = 400

[partners.dsp-a]
url = "http://127.0.0.1:7001/bid"
countries = ["us", "CA"]
os = ["Android", "ios"]
headers = { "X-Api-Key" = "secret" }

[partners.dsp-b]
url = "https://dsp-b.example/bid"

[routes.bid]
partners = ["dsp-a", "dsp-b"]
max_partners = 1
"""


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    return caught.value.errors


def test_good_file_loads_with_defaults_and_normalised_values(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    config = load(str(path))
    assert config.server.deadline_ms == 400
    assert config.server.max_inflight == 2000
    a = config.partners["dsp-a"]
    assert a.countries == {"US", "CA"} and a.os == {"android", "ios"}
    assert a.timeout_ms == 300 and a.max_concurrency == 256
    assert config.routes["bid"].partners == ("dsp-a", "dsp-b")
    assert config.routes["bid"].max_partners == 1


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    config = load(str(path), {"deadline_ms": 250, "listen": None})
    assert config.server.deadline_ms == 250
    assert config.server.listen == "tcp:8080:backlog=4096"


def test_every_error_is_reported_with_its_key():
    errors = errors_of({
        "server": {"deadline_ms": -1, "max_inflight": "many", "colour": "blue"},
        "partners": {
            "dsp-a": {"url": "ftp://x/", "timeout_ms": 0, "countries": ["USA"],
                      "os": ["beos"], "headers": {"X Bad": "v", "X-Ok": "a\nb"}},
            "dsp-b": {"timeout_ms": True},
            "dsp-c": {"url": "http://h/", "countries": ["US"], "exclude_countries": ["CA"]},
        },
        "routes": {"bid": {"partners": ["dsp-a", "nobody", "dsp-a"], "max_partners": 9}},
        "extra": {},
    })
    expected = [
        "extra: unknown key",
        "server.colour: unknown key",
        "server.deadline_ms: must be an integer from 10 to 60000",
        "server.max_inflight: must be an integer from 1 to 1000000",
        "partners.dsp-a.url: must be an http:// or https:// URL",
        "partners.dsp-a.timeout_ms: must be an integer from 1 to 60000",
        "partners.dsp-a.countries: must be a non-empty list of two-letter ISO 3166-1 "
        "country codes; bad: ['USA']",
        "partners.dsp-a.headers.X Bad: is not a valid HTTP header name",
        "partners.dsp-a.headers.X-Ok: must be a string without CR, LF or NUL",
        "partners.dsp-b.url: is required",
        "partners.dsp-b.timeout_ms: must be an integer from 1 to 60000",
        "partners.dsp-c: give countries or exclude_countries, not both",
        "routes.bid.partners: unknown partner 'nobody'",
        "routes.bid.partners: lists a partner twice",
        "routes.bid.max_partners: must be an integer from 1 to 8",
    ]
    for line in expected:
        assert line in errors
    assert any(e.startswith("partners.dsp-a.os: must be a non-empty list of OS names")
               for e in errors)


@pytest.mark.parametrize("url, reason", [
    ("http:///nohost", "has no host"),
    ("http://u:p@h/", "must not carry credentials; use headers"),
    ("http://h:99999/", "is not a valid URL"),
    ("http://h/#frag", "must not contain a fragment or white space"),
    (42, "must be a string"),
    ("http://bücher.example/", "must be ASCII"),
])
def test_bad_urls(url, reason):
    errors = errors_of({"partners": {"p": {"url": url}}, "routes": {"r": {"partners": ["p"]}}})
    assert any(e.startswith(f"partners.p.url: {reason}") for e in errors), errors


def test_a_route_is_required_and_names_are_checked():
    assert errors_of({}) == ["routes: at least one route is required"]
    errors = errors_of({"partners": {"bad name": {"url": "http://h/"}},
                        "routes": {"../x": {"partners": ["bad name"]}}})
    assert any(e.startswith("partners.bad name: partner names") for e in errors)
    assert any(e.startswith("routes.../x: route names") for e in errors)


def test_check_config_says_ok_or_names_every_error(tmp_path, capsys):
    # In this process (the command itself, as a process, is the slow test below).
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("deadline_ms = 400", "deadline_ms = 'soon'"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    assert main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert main(["check-config", str(bad)]) == 1
    assert capsys.readouterr().err == \
        "server.deadline_ms: must be an integer from 10 to 60000\n"
    assert main(["check-config", str(broken)]) == 1
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.runtime_neutral
def test_check_config_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("deadline_ms = 400", "deadline_ms = 'soon'"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")

    def run(path):
        return subprocess.run([sys.executable, "-m", "txfanout", "check-config", str(path)],
                              capture_output=True, text=True, timeout=60)

    ok = run(good)
    assert ok.returncode == 0 and "ok" in ok.stdout
    refused = run(bad)
    assert refused.returncode == 1
    assert "server.deadline_ms: must be an integer from 10 to 60000" in refused.stderr
    assert "Traceback" not in refused.stderr
    unparsable = run(broken)
    assert unparsable.returncode == 1 and "not valid TOML" in unparsable.stderr
    missing = run(tmp_path / "missing.toml")
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_the_shipped_example_config_is_valid():
    from pathlib import Path

    example = Path(__file__).parent.parent / "etc" / "txfanout.toml"
    config = load(str(example))
    assert set(config.routes) == {"bid"}


def test_max_answer_bytes_has_a_default_and_a_range():
    raw = {"partners": {"a": {"url": "http://127.0.0.1:1/"}},
           "routes": {"bid": {"partners": ["a"]}}}
    assert parse(raw).server.max_answer_bytes == 16 * 1024 * 1024
    assert errors_of({**raw, "server": {"max_answer_bytes": 1000}}) == [
        "server.max_answer_bytes: must be an integer from 65536 to 1073741824"]


def route_errors(**route) -> list[str]:
    """The errors of a route 'bid' over partners a, b, c with ``route``'s keys."""
    partners = {n: {"url": f"http://h/{n}"} for n in "abc"}
    return errors_of({"partners": partners,
                      "routes": {"bid": {"partners": ["a", "b", "c"], **route}}})


ANSWER_WHEN = 'routes.bid.answer_when: must be "all", "first_ok" or an integer from 1 to 8'


@pytest.mark.parametrize("route, error", [
    ({"answer_when": "first"}, ANSWER_WHEN),
    ({"answer_when": 0}, ANSWER_WHEN),
    ({"answer_when": 9}, ANSWER_WHEN),
    ({"answer_when": True}, ANSWER_WHEN),
    ({"answer_when": 1.0}, ANSWER_WHEN),
    ({"answer_when": 4}, "routes.bid.answer_when: must be at most the number of partners "
                         "the route calls at once (3)"),
    ({"answer_when": 3, "max_partners": 2}, "routes.bid.answer_when: must be at most the "
                                            "number of partners the route calls at once (2)"),
    ({"primary": ["d"], "grace_ms": 10}, "routes.bid.primary: 'd' is not one of the route's "
                                         "partners"),
    ({"primary": ["a", "a"], "grace_ms": 10}, "routes.bid.primary: lists a partner twice"),
    ({"primary": [], "grace_ms": 10}, "routes.bid.primary: must be a non-empty list of "
                                      "partner names"),
    ({"primary": ["a"]}, "routes.bid.grace_ms: is required with primary"),
    ({"primary": ["a"], "grace_ms": 10, "answer_when": "first_ok"},
     'routes.bid.primary: cannot be combined with answer_when other than "all"'),
    ({"grace_ms": 10}, "routes.bid.grace_ms: only applies with primary"),
    ({"primary": ["a"], "grace_ms": -1}, "routes.bid.grace_ms: must be an integer from 0 "
                                         "to 60000"),
    ({"primary": ["a"], "grace_ms": 60001}, "routes.bid.grace_ms: must be an integer from 0 "
                                            "to 60000"),
    ({"primary": ["a"], "grace_ms": "10"}, "routes.bid.grace_ms: must be an integer from 0 "
                                           "to 60000"),
])
def test_when_the_answer_is_ready_is_checked_key_by_key(route, error):
    assert route_errors(**route) == [error]


def test_when_the_answer_is_ready_defaults_to_every_call_and_keeps_what_is_given():
    partners = {n: {"url": f"http://h/{n}"} for n in "abc"}
    routes = {"default": {"partners": ["a", "b"]},
              "first": {"partners": ["a", "b"], "answer_when": "first_ok"},
              "two": {"partners": ["a", "b", "c"], "answer_when": 2},
              "primary": {"partners": ["a", "b", "c"], "primary": ["b"], "grace_ms": 0}}
    loaded = parse({"partners": partners, "routes": routes}).routes
    assert (loaded["default"].answer_when, loaded["default"].primary) == ("all", ())
    assert loaded["first"].answer_when == "first_ok"
    assert loaded["two"].answer_when == 2
    assert (loaded["primary"].primary, loaded["primary"].grace_ms) == (("b",), 0)
