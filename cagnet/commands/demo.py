"""`cagnet demo`: the whole pipeline on the built-in shapes benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> None:
    parser = commands.add_parser("demo", help="the whole pipeline on the built-in shapes "
                                 "benchmark: generate, embed, pretrain, train, finetune, evaluate")
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--config", default=None, help="step-1 recipe (default: "
                        "experiments/shapes.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a value of both stages' recipes")
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.engine.demo import run_demo

    run_demo(Path(arguments.output_dir), arguments.config, arguments.overrides, arguments.seed)
    return 0
