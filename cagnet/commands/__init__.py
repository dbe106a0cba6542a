"""One module per `cagnet` subcommand (or group of subcommands).

Each module defines `add_parser(commands)`, which adds its parser(s) to the argparse
subparsers and sets `handler=run` on them, and `run(arguments) -> int`. Modules import torch and
the engine inside `run`, so `cagnet --help` stays instant.
"""
