"""`cagnet compare`: every method on one benchmark and the paper-style table (compare.md)."""

import argparse

from cagnet.commands.common import add_command, add_overrides_argument


def add_parser(commands) -> None:
    parser = add_command(
        commands, "compare", "every method (SPNet, SPNet-c, ZS3Net, CaGNet, + ST) on one "
        "benchmark: the paper-style table", """
cagnet compare --output-dir runs/demo            # shapes, reusing the demo's benchmark
cagnet compare --config voc12_compare --output-dir runs/voc12_compare
cagnet compare --config msrc_compare --set data.root=/data/msrc --output-dir runs/msrc""", run)
    parser.add_argument("--config", default="shapes_compare", help="compare recipe: a name "
                        "(`cagnet recipes`) or a YAML file (default: shapes_compare)")
    parser.add_argument("--output-dir", default="runs/compare", help="output folder; with a "
                        "shapes recipe, the benchmark and the pretraining of `cagnet demo "
                        "--output-dir` in the same folder are reused")
    add_overrides_argument(parser, "override a value in every stage's config")
    parser.add_argument("--fresh", action="store_true",
                        help="re-run every stage instead of reusing finished ones")


def run(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from cagnet.baselines.compare.run import run_compare
    from cagnet.config import find_recipe
    run_compare(find_recipe(arguments.config), Path(arguments.output_dir), arguments.overrides,
                arguments.fresh)
    return 0
