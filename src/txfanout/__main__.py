"""``python -m txfanout COMMAND`` (or ``txfanout COMMAND``): operator commands."""

from __future__ import annotations

import argparse
import os
import sys

from . import about, advice, demo, top
from . import config as configuration


def check_config(path: str) -> int:
    """Validate ``path``; print every error with its key; 0 when valid.
    Warnings (partners on placeholder hosts) are printed, not refused."""
    try:
        config = configuration.load(path)
    except configuration.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 1
    for line in advice.warnings(config):
        print(f"warning: {line}", file=sys.stderr)
    print(f"{path}: ok")
    return 0


def init_config(path: str, port: int, force: bool) -> int:
    """Write the starter configuration (the demo partners, commented) to
    ``path`` ("-": standard output); never over a file unless ``force``."""
    text = demo.starter_config(port)
    if path == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(path, "w" if force else "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        print(f"init-config: {path} exists; give another path, or --force to replace it",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"init-config: cannot write {path} ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"wrote {path}: it calls the demo partners. Run it with\n"
          f"  twistd -n --pidfile= fanout --demo"
          f"{'' if port == demo.DEMO_PORT else f' --demo-port {port}'} --config {path}\n"
          f"then give its partners your partners' URLs (txfanout check-config {path}).")
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
        prog="txfanout",
        description="Operator commands. The daemon itself is 'twistd -n fanout' "
                    "(see 'twistd fanout --help').")
    parser.add_argument("--version", action="version", version=about.version_line())
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path")
    init = commands.add_parser(
        "init-config", help="write a starter configuration that calls the demo partners",
        description="Write a commented configuration that calls the partners of "
                    "'twistd fanout --demo', to run as it is and then make your own.")
    init.add_argument("path", help="the file to write ('-': standard output)")
    init.add_argument("--demo-port", type=int, default=demo.DEMO_PORT,
                      help=f"the demo partners' port (default {demo.DEMO_PORT})")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    commands.add_parser("regenerate-plugin-cache",
                        help="rebuild Twisted's plugin cache after install (run as its owner)")
    top.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    if args.command == "init-config":
        if not 0 < args.demo_port < 65536:
            parser.error("--demo-port must be from 1 to 65535")
        return init_config(args.path, args.demo_port, args.force)
    if args.command == "regenerate-plugin-cache":
        return regenerate_plugin_cache()
    if args.command == "top":
        return top.main(args)
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
