"""`cagnet fewshot`: new-class IoU against the number K of labelled images, per method."""

import argparse

from cagnet.commands.common import add_command, add_overrides_argument
from cagnet.errors import CagnetError

EXAMPLES = """
# the README's walkthrough: a shapes model trained without "plain yellow", which is then added
# from K = 0, 1, 2 and 5 labelled training images, 3 draws each (in the folder of `cagnet demo`
# the benchmark and the pretrained trunk are reused):
cagnet fewshot --config shapes_fewshot --shots 0,1,2,5 --draws 3 \\
    --output-dir runs/demo
"""


def add_parser(commands) -> None:
    parser = add_command(commands, "fewshot", "add classes from K labelled images: CaGNet's "
                         "extension, a pixel classifier and synthesised labels against K",
                         EXAMPLES, run)
    parser.add_argument("--config", default="shapes_fewshot",
                        help="few-shot recipe: an installed recipe's name (`cagnet recipes`) "
                             "or a YAML file (default: shapes_fewshot)")
    parser.add_argument("--shots", default="0,1,2,5", help="the values of K (default 0,1,2,5)")
    parser.add_argument("--draws", type=int, default=3, help="draws of shot images per K")
    parser.add_argument("--output-dir", default="runs/fewshot", help="output folder")
    add_overrides_argument(parser, "override a value of every training stage")
    parser.add_argument("--fresh", action="store_true", help="re-run every cached stage")


def run(arguments: argparse.Namespace) -> int:
    from pathlib import Path

    from cagnet.baselines.fewshot import run_fewshot
    from cagnet.config import find_recipe
    try:
        shots = sorted({int(value) for value in arguments.shots.split(",")})
    except ValueError:
        shots = [-1]
    if shots[0] < 0 or arguments.draws < 1:
        raise CagnetError(f"--shots {arguments.shots!r} / --draws {arguments.draws}: expected "
                          "comma-separated integers >= 0 and at least one draw")
    run_fewshot(find_recipe(arguments.config), Path(arguments.output_dir), shots, arguments.draws,
                arguments.overrides, arguments.fresh)
    print((Path(arguments.output_dir) / "fewshot.md").read_text(encoding="utf-8"))
    return 0
