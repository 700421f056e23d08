"""``python -m txfanout COMMAND``: operator commands."""

from __future__ import annotations

import argparse
import sys

from . import config as configuration
from . import top


def check_config(path: str) -> int:
    """Validate ``path``; print every error with its key; 0 when valid."""
    try:
        configuration.load(path)
    except configuration.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txfanout")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path")
    top.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "top":
        return top.main(args)
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
