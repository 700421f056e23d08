"""``python -m txfanout COMMAND`` (or ``txfanout COMMAND``): operator commands."""

from __future__ import annotations

import argparse
import os
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


def _stale(directory: str) -> bool:
    """True when ``directory`` holds plugin modules newer than its cache."""
    cache = os.path.join(directory, "dropin.cache")
    if not os.path.exists(cache):
        return True
    built = os.path.getmtime(cache)
    return any(name.endswith(".py") and os.path.getmtime(os.path.join(directory, name)) > built
               for name in os.listdir(directory))


def regenerate_plugin_cache() -> int:
    """Rebuild ``twisted/plugins/dropin.cache`` in every plugin directory,
    as twistd would on its first run if it could write there. Run it after
    installing or upgrading, as the user who owns the install (pip does not
    run code at install time; a daemon running as another user cannot)."""
    import twisted.plugins
    from twisted.plugin import IPlugin, getPlugins

    names = {getattr(p, "tapname", None) for p in getPlugins(IPlugin)}
    status = 0
    for directory in twisted.plugins.__path__:
        if not os.path.isdir(directory):
            continue
        if _stale(directory):
            print(f"{directory}: cannot write dropin.cache (run as its owner)", file=sys.stderr)
            status = 1
        else:
            print(f"{directory}: dropin.cache up to date")
    if "fanout" not in names:
        print("the fanout plugin was not found: is txfanout installed in this Python?",
              file=sys.stderr)
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m txfanout",
        description="Operator commands. The daemon itself is 'twistd -n fanout' "
                    "(see 'twistd fanout --help').")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path")
    commands.add_parser("regenerate-plugin-cache",
                        help="rebuild Twisted's plugin cache after install (run as its owner)")
    top.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "regenerate-plugin-cache":
        return regenerate_plugin_cache()
    if args.command == "top":
        return top.main(args)
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
