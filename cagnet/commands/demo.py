"""`cagnet demo`: the whole pipeline on the built-in shapes benchmark."""

import argparse
from pathlib import Path

from cagnet.commands.common import add_command, add_overrides_argument


def add_parser(commands) -> None:
    parser = add_command(commands, "demo", "the whole pipeline on the built-in shapes "
                         "benchmark: generate, embed, pretrain, train, finetune, evaluate", """
cagnet demo
cagnet demo --output-dir runs/demo_seed1 --seed 1
cagnet demo --set train.seed=3 --output-dir runs/demo_train_seed3""", run)
    parser.add_argument("--output-dir", default="runs/demo", help="the demo's folder: shapes/ "
                        "(the benchmark), pretrain/, step1/, finetune/, metrics.json, report.md "
                        "(default runs/demo; the benchmark and pretraining found there are "
                        "reused, step 1 and the finetune run again)")
    parser.add_argument("--config", default=None, help="step-1 recipe, a name or a "
                        "YAML file (default: shapes; the finetune uses shapes_finetune)")
    add_overrides_argument(parser, "override a value of both stages' recipes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the benchmark's images "
                        "and word vectors (default 0; train.seed seeds the training)")


def run(arguments: argparse.Namespace) -> int:
    from cagnet.engine.demo import run_demo
    run_demo(Path(arguments.output_dir), arguments.config, arguments.overrides, arguments.seed)
    return 0
