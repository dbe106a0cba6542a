"""`cagnet eval`: evaluate a checkpoint on the test split."""

from __future__ import annotations

import argparse

from cagnet.commands.common import add_config_arguments


def add_parser(commands) -> None:
    parser = commands.add_parser("eval", help="evaluate a checkpoint on the test split")
    parser.add_argument("--checkpoint", required=True)
    add_config_arguments(parser, required=False)
    parser.add_argument("--output-dir", default=None, help="where metrics.json and report.md "
                        "go (default: eval_<checkpoint> beside the run's checkpoints folder)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.engine.evaluate import evaluate_checkpoint
    from cagnet.report.tables import format_scores_line

    scores, out_dir = evaluate_checkpoint(arguments.checkpoint, arguments.config,
                                          arguments.overrides, arguments.output_dir)
    print(format_scores_line(scores))
    print(f"report written to {out_dir}")
    return 0
