"""`cagnet compare`: train and evaluate SPNet, SPNet-c, ZS3Net, CaGNet and their self-training
variants on one benchmark and write the paper-style table (compare.md, compare.json)."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "compare", help="every method (SPNet, SPNet-c, ZS3Net, CaGNet, + ST) on one benchmark: "
        "the paper-style table")
    parser.add_argument("--config", default="experiments/shapes_compare.yaml",
                        help="compare recipe (default: experiments/shapes_compare.yaml)")
    parser.add_argument("--output-dir", default="runs/compare",
                        help="output folder; with a shapes recipe, the benchmark and the "
                        "pretraining of `cagnet demo --output-dir` in the same folder are "
                        "reused")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a value in every stage's config")
    parser.add_argument("--fresh", action="store_true",
                        help="re-run every stage instead of reusing finished ones")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from cagnet.baselines.compare.run import run_compare
    from cagnet.datasets.build import PROJECT_ROOT

    recipe = Path(arguments.config)
    if not recipe.is_file() and not recipe.is_absolute() and (PROJECT_ROOT / recipe).is_file():
        recipe = PROJECT_ROOT / recipe
    run_compare(recipe, Path(arguments.output_dir), arguments.overrides, arguments.fresh)
    return 0
