"""The `ringcast` console script: one entry point, one subcommand per service.

Owns only the dispatch from a subcommand name to the module that implements
it, and `ringcast --version` (the installed distribution's version); each
service parses its own flags. Imports are lazy so `ringcast node` never pays
for the load generator's imports and vice versa.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

DISTRIBUTION = "ringcast"  # the installed package whose version `--version` prints

# subcommand -> (module, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "node": ("node.cli", "run an edge node: a supervisor and its worker processes"),
    "up": ("chaos.up", "start a local cluster (redis, node workers, router) in the foreground"),
    "control": ("control.cli", "run a control plane replica: membership, ring epochs, drain, operator API"),
    "ctl": ("control.ctl", "operate the control plane: nodes, ring, room, drain, undrain, rebalance, events, top, proxy-config"),
    "router": ("router.cli", "run the route service: GET /route?room=R -> the worker that owns R"),
    "bench": ("chaos.bench.cli", "load generator: verified fan-out / many-rooms / idle-memory benchmarks; JSON + Markdown"),
    "drill": ("chaos.drill.cli", "run a failover drill (kill-worker, redis-restart, ...) under verified load; PASS/FAIL + reports"),
}


def version() -> str:
    """The installed `ringcast` distribution's version, or "unknown" when it is not installed (a bare checkout)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _usage() -> str:
    lines = ["usage: ringcast <command> [options]", "       ringcast --version", "", "commands:"]
    for name, (_, summary) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {summary}")
    lines.append("")
    lines.append("Run `ringcast <command> --help` for the options of one command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"{DISTRIBUTION} {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"ringcast: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
