"""What is running: txfanout's version (``txfanout.__version__``, the one
place it is written) with the Python and Twisted under it, as ``--version``,
``/healthz`` and the ``txfanout_build_info`` gauge show it."""

from __future__ import annotations

import platform

import twisted

from . import __version__


def build_info() -> dict[str, str]:
    """``version``, ``python`` (implementation and version) and ``twisted``."""
    return {"version": __version__,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "twisted": twisted.__version__}


def version_line() -> str:
    """One line for ``--version``: ``txfanout 0.1.0 (CPython 3.11.7, Twisted 26.10.0)``."""
    info = build_info()
    return f"txfanout {info['version']} ({info['python']}, Twisted {info['twisted']})"
