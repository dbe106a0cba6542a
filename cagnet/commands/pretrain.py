"""`cagnet pretrain`: image-level pretraining of the backbone trunk."""

from __future__ import annotations

import argparse

from cagnet.commands.common import add_config_arguments


def add_parser(commands) -> None:
    parser = commands.add_parser("pretrain", help="image-level pretraining of the backbone "
                                 "trunk on a labelled image corpus (writes an init checkpoint)")
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="init checkpoint to write (.pt)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.builders import pretrain_from_config
    from cagnet.config import load_config

    config = load_config(arguments.config, arguments.overrides)
    summary = pretrain_from_config(config, arguments.out)
    print(f"pretrained backbone written to {arguments.out}: held-out accuracy "
          f"{summary['held_out_accuracy']:.3f}")
    return 0
