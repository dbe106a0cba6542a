"""The `cagnet` command line: parsing and dispatch to the subcommands of `cagnet/commands/`.
Errors the user can fix are printed as one line naming the file, key or value (exit status 2),
never as a traceback."""

import argparse
import importlib
import sys
from typing import Sequence

from cagnet.engine.signals import RunStopped
from cagnet import __version__
from cagnet.errors import CagnetError

COMMAND_MODULES = tuple(f"cagnet.commands.{name}" for name in (
    "demo", "data", "embed", "train", "evaluate", "audit", "import_checkpoint",
    "predict", "export", "extend", "compare", "fewshot", "calibrate", "recipes"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cagnet", description="Zero-shot semantic "
                                     "segmentation with context-aware feature generation.")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"cagnet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from cagnet.utils.runtime import configure_logging

    arguments = build_parser().parse_args(argv)
    configure_logging(arguments.verbose)
    try:
        return arguments.handler(arguments)
    except CagnetError as error:
        print(f"cagnet: error: {error}", file=sys.stderr)
        return 2
    except RunStopped as stop:  # SIGTERM / SIGINT: checkpoint written, exit 128 + signal
        print(f"cagnet: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("cagnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
