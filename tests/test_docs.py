"""The documentation stays true: its links and the files, keys and metrics it
names exist, its examples still run (against a live ``twistd fanout --demo``),
every shipped configuration passes check-config, and each page keeps the
facts that are its to keep."""

from __future__ import annotations

import dataclasses
import http.client
import json
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from txfanout import config, targeting
from txfanout._compat import tomllib

from .daemon import Daemon, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.rst")) + [ROOT / "README.rst"]
REPO_DIRS = {"docs", "etc", "tools", "bench", "systemd", "src", "tests", ".ci", "twisted"}

LINK = re.compile(r"`[^`<]*<([^>`]+)>`__?")
REFERENCE = re.compile(r"(?<![`:<\w])`([^`<>]+)`_(?!_)")
LITERAL = re.compile(r"``(.+?)``", re.S)
TITLE = re.compile(r"^(\S.*)\n([=\-~^\"'`#*+])\2+\s*$", re.M)


def docs_ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def literals(text: str) -> Iterator[str]:
    for match in LITERAL.finditer(text):
        yield " ".join(match.group(1).split())


@pytest.mark.parametrize("doc", DOCS, ids=docs_ids)
def test_links_and_references_resolve(doc: Path) -> None:
    text = doc.read_text()
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target):
            continue
        assert (doc.parent / target.split("#")[0]).exists(), f"{doc.name}: {target}"
    titles = {m.group(1).strip() for m in TITLE.finditer(text)}
    labels = set(re.findall(r"^\.\. _([^:]+):", text, re.M))
    for name in REFERENCE.findall(text):
        assert " ".join(name.split()) in titles | labels, f"{doc.name}: `{name}`_"


@pytest.mark.parametrize("doc", DOCS, ids=docs_ids)
def test_the_files_it_names_exist(doc: Path) -> None:
    for literal in literals(doc.read_text()):
        word = literal.split()[0] if literal.split() else ""
        if "/" in word and word.split("/")[0] in REPO_DIRS:
            assert (ROOT / word.rstrip(":")).exists(), f"{doc.name}: {word}"
        elif re.fullmatch(r"[\w.]+\.py", word):
            assert (ROOT / "src" / "txfanout" / word).exists() or (ROOT / word).exists(), \
                f"{doc.name}: {word}"


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if not f.metadata.get("derived") and f.name != "name"}


SECTIONS = {"server": config.ServerConfig, "targeting": config.TargetingConfig,
            "upstream": config.UpstreamConfig, "log": config.LogConfig,
            "partners": config.PartnerConfig, "routes": config.RouteConfig}
KEYS = {key for cls in SECTIONS.values() for key in _fields(cls)}
# Words in ``snake_case`` ending in _ms or _bytes that the docs use and that
# are not config keys (a key misspelt looks like these).
NOT_KEYS = {"age_ms", "left_ms", "elapsed_ms", "latency_ms"}  # fields of answers and views


@pytest.mark.parametrize("doc", DOCS, ids=docs_ids)
def test_the_config_keys_it_names_exist(doc: Path) -> None:
    text = doc.read_text()
    for section, key in re.findall(r"\b(server|targeting|upstream|log)\.(?!py\b)([a-z_]+)\b",
                                   text):
        assert key in _fields(SECTIONS[section]), f"{doc.name}: {section}.{key}"
    for section, key in re.findall(r"\b(partners|routes)\.[\w-]+\.([a-z_]+)\b", text):
        assert key in _fields(SECTIONS[section]), f"{doc.name}: {section}.NAME.{key}"
    for literal in literals(text):
        bare = re.fullmatch(r"([a-z]+(?:_[a-z]+)+)( = .*)?", literal)
        if bare and bare.group(1).endswith(("_ms", "_bytes")):
            assert bare.group(1) in KEYS | NOT_KEYS, f"{doc.name}: ``{literal}``"


def test_the_configuration_example_is_a_valid_configuration() -> None:
    text = (ROOT / "docs" / "configuration.rst").read_text()
    lines = text.split("tail`_)::\n\n", 1)[1].splitlines()
    end = next(i for i, line in enumerate(lines) if line and not line.startswith("    "))
    example = "\n".join(line[4:] for line in lines[:end])
    parsed = config.parse(tomllib.loads(example))
    assert parsed.routes["bid"].primary == ("dsp-a", "dsp-b")
    assert parsed.partners["dsp-a"].max_rps == 500 and parsed.partners["dsp-a"].adaptive_timeout
    assert parsed.partners["dsp-b"].tail_sample == 0.05


def test_etc_txfanout_toml_is_the_reference_of_every_key() -> None:
    text = (ROOT / "etc" / "txfanout.toml").read_text()
    missing = [key for key in sorted(KEYS) if not re.search(rf"^[# ]*{key} = ", text, re.M)]
    assert not missing


def test_every_module_is_on_the_request_walk() -> None:
    text = (ROOT / "docs" / "architecture.rst").read_text()
    modules = [p.name for p in (ROOT / "src" / "txfanout").glob("*.py")
               if p.name != "__init__.py"]
    assert [m for m in modules if f"``{m}``" not in text] == []


def test_each_fact_is_in_its_one_place() -> None:
    """The item 7 facts, each where a reader looks for it; the commands CI
    runs, as the front page and the PyPy page give them."""
    contract = (ROOT / "docs" / "http.rst").read_text()
    for alias in sorted(targeting._OS_ALIASES):
        assert f"``{alias}``" in contract, alias
    assert '"results": []' in contract and "``X-Request-Id``" in contract
    assert "``GET /``" in (ROOT / "docs" / "observability.rst").read_text()
    readme = (ROOT / "README.rst").read_text()
    assert len(readme.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text()
    (test_command,) = [line for line in ci.splitlines() if line.startswith("python3 -m venv .venv ")]
    assert f"    {test_command}\n" in readme
    pypy = (ROOT / "docs" / "pypy.rst").read_text()
    for line in (ROOT / ".ci" / "pypy").read_text().splitlines():
        if line.startswith(".venv-pypy/bin/"):
            assert line in pypy, line


def shipped_configs() -> list[Path]:
    return sorted((ROOT / "etc").glob("*.toml"))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_every_shipped_config_passes_check_config(path: Path) -> None:
    checked = subprocess.run([sys.executable, "-m", "txfanout", "check-config", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stdout == f"{path}: ok\n", checked.stderr
    # Its partners are placeholders, and it says so where it will be read.
    assert all(line.startswith("warning: partners.") for line in checked.stderr.splitlines())
    assert "PLACEHOLDERS" in path.read_text().split("[server]")[0]


# -- the examples, against a live daemon --


@pytest.fixture(scope="module")
def demo() -> Iterator[Daemon]:
    daemon = Daemon("--demo", "--demo-port", str(free_port()))
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def examples(doc: Path) -> Iterator[tuple[str, str]]:
    """(command, documented output) of each ``$ curl`` in a literal block."""
    lines = doc.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("$ curl "):
            indent = len(line) - len(line.lstrip())
            output = []
            for following in lines[i + 1:]:
                if not following.strip() or following.strip().startswith("$ ") or \
                        len(following) - len(following.lstrip()) < indent:
                    break
                output.append(following)
            yield line.strip()[2:], "\n".join(output)


def run_curl(command: str, daemon: Daemon) -> tuple[int, Any]:
    """Do what ``curl -s [-X M] URL [-H H]... [-d D]`` would, on the daemon's ports."""
    args = shlex.split(command)[1:]
    method, headers, data, url = "GET", {}, None, ""
    while args:
        arg = args.pop(0)
        if arg == "-s":
            continue
        if arg == "-X":
            method = args.pop(0)
        elif arg == "-H":
            name, _, value = args.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = args.pop(0).encode()
            method = "POST" if method == "GET" else method
        else:
            url = arg
    host, _, path = url.partition("/")
    port = {"localhost:8080": daemon.port, "localhost:8081": daemon.admin_port}[host]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, "/" + path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


VOLATILE = {"request_id", "elapsed_ms", "complete", "pid", "inflight", "version"}


def same_shape(documented: Any, live: Any, where: str = "") -> None:
    """``live`` is what ``documented`` shows, but for what changes from one
    call to the next: ids, times, and each partner's own answer."""
    if isinstance(documented, dict):
        assert isinstance(live, dict), where
        if "partner" in documented:  # one partner's result: its outcome varies
            assert documented["partner"] == live["partner"], where
            return
        assert set(documented) == set(live), where
        for key in documented:
            if key not in VOLATILE:
                same_shape(documented[key], live[key], f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(live, list) and len(documented) == len(live), where
        for i, (d, v) in enumerate(zip(documented, live)):
            same_shape(d, v, f"{where}[{i}]")
    else:
        assert documented == live, where


CURL_DOCS = [doc for doc in DOCS if "$ curl " in doc.read_text()]


@pytest.mark.parametrize("doc", CURL_DOCS, ids=docs_ids)
def test_the_curl_examples_answer_as_shown(doc: Path, demo: Daemon) -> None:
    found = list(examples(doc))
    assert found
    for command, output in found:
        status, live = run_curl(command, demo)
        assert status < 500, (command, live)
        same_shape(json.loads(output), live, command)


def test_the_metrics_the_docs_name_are_exported(demo: Daemon) -> None:
    assert demo.post("/bid")[0] == 200  # the per-request families, whatever ran before
    _, text = _get(demo.admin_port, "/metrics")
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    for doc in DOCS:
        for name in re.findall(r"\btxfanout_[a-z0-9_]*[a-z0-9]\b(?!\.py)", doc.read_text()):
            if name in CPYTHON_ONLY and platform.python_implementation() != "CPython":
                assert name not in exported, f"{doc.name}: {name} (documented absent on PyPy)"
            elif name in PYPY_ONLY and platform.python_implementation() != "PyPy":
                assert name not in exported, f"{doc.name}: {name} (documented absent on CPython)"
            else:
                assert name in exported, f"{doc.name}: {name}"


CPYTHON_ONLY = {"txfanout_gc_seconds_total"}  # observability.rst: "Absent on PyPy"
PYPY_ONLY = {"txfanout_pypy_gc_seconds_total"}  # observability.rst: "Absent on CPython"


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()
