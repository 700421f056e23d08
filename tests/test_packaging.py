"""``pip install .`` into a fresh venv gives a working ``twistd fanout``, the
``txfanout`` command, and a plugin cache; ``pip install -e .`` a working
``twistd fanout`` on the sources."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .daemon import TWISTD_MAIN

# pip into fresh venvs.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                    "dropin.cache", ".pytest_cache")


def run(*cmd: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def borrowed_site_packages(farm: Path) -> Path:
    """This environment's site-packages as a tree of links, without any
    txfanout installed in it: where CI has installed txfanout, its plugin
    module would shadow the fresh install's (Twisted keeps the first module
    of a name), as no real single install ever sees."""
    farm.mkdir()
    for outer in map(Path, site.getsitepackages()):
        if not outer.is_dir():
            continue
        for entry in outer.iterdir():
            if entry.name.startswith("txfanout") or (farm / entry.name).exists():
                continue
            if entry.name == "twisted":
                (farm / "twisted").mkdir()
                for part in entry.iterdir():
                    if part.name != "plugins":
                        (farm / "twisted" / part.name).symlink_to(part)
                (farm / "twisted" / "plugins").mkdir()
                for plugin in (entry / "plugins").iterdir():
                    if plugin.name not in ("txfanout_plugin.py", "dropin.cache", "__pycache__"):
                        (farm / "twisted" / "plugins" / plugin.name).symlink_to(plugin)
            else:
                (farm / entry.name).symlink_to(entry)
    return farm


def fresh_venv(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the sources (pip writes build/ and *.egg-info beside them)
    and a venv whose dependencies (and pip) come from this environment,
    behind its own site-packages: tests do not download. Returns (sources,
    venv, site-packages)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    site_dir = venv / Path(sysconfig.get_path("purelib", vars={"base": ""}).lstrip("/"))
    assert site_dir.is_dir(), site_dir
    borrowed = borrowed_site_packages(tmp_path / "borrowed")
    (site_dir / "outer.pth").write_text(f"{borrowed}\n")
    return source, venv, site_dir


def test_pip_install_into_a_fresh_venv(tmp_path: Path) -> None:
    source, venv, site_dir = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", source,
        cwd=tmp_path)

    where = run(python, "-c", "import txfanout; print(txfanout.__file__)", cwd=tmp_path)
    assert where.startswith(str(site_dir)), where  # the installed copy, not the sources
    assert (Path(where.strip()).parent / "py.typed").exists()  # its hints are for checkers
    plugins = site_dir / "twisted" / "plugins"
    assert (plugins / "txfanout_plugin.py").exists()
    assert not (plugins / "__init__.py").exists()  # it would hide Twisted's own plugins
    assert not (plugins / "dropin.cache").exists()  # pip runs no code: nobody wrote it

    # The console entry point; run it as the owner of the install.
    out = run(venv / "bin" / "txfanout", "regenerate-plugin-cache", cwd=tmp_path)
    assert f"{plugins}: dropin.cache up to date" in out
    assert b"txfanout_plugin" in (plugins / "dropin.cache").read_bytes()
    assert run(venv / "bin" / "txfanout", "check-config", source / "etc" / "txfanout.toml",
               cwd=tmp_path).endswith(": ok\n")

    manual = run(python, "-c", TWISTD_MAIN, "fanout", "--help", cwd=tmp_path)
    assert "--workers=" in manual and "SIGNALS" in manual and "EXIT STATUS" in manual


@pytest.mark.runtime_neutral
def test_an_editable_install_serves_twistd_fanout_from_the_sources(tmp_path: Path) -> None:
    source, venv, site_dir = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
        source, cwd=tmp_path)
    where = run(python, "-c", "import txfanout; print(txfanout.__file__)", cwd=tmp_path)
    assert str(source) in where, where  # the sources themselves, through the link tree
    manual = run(python, "-c", TWISTD_MAIN, "fanout", "--help", cwd=tmp_path)
    assert "--workers=" in manual
