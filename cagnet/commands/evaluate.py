"""`cagnet eval`: evaluate a checkpoint on the test split."""

import argparse

from cagnet.commands.common import add_command, add_config_arguments
from cagnet.commands.predict import add_min_confidence_argument


def add_parser(commands) -> None:
    parser = add_command(commands, "eval", "evaluate a checkpoint on the test split (both "
                         "protocols; metrics.json, report.md, pictures)", """
cagnet eval --checkpoint runs/demo/finetune/checkpoints/last.pt
cagnet eval --checkpoint runs/voc12_finetune/checkpoints/last.pt \\
    --set data.root=/data/VOCdevkit/VOC2012 --set eval.tta=true
cagnet eval --checkpoint last.pt --min-confidence 0.5 --output-dir runs/eval_open_world""", run)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file of any method "
                        "(CaGNet, SPNet, ZS3Net); its run's data paths are used unless --set")
    add_config_arguments(parser, required=False)
    parser.add_argument("--output-dir", default=None, help="where metrics.json and report.md "
                        "go (default: eval_<checkpoint> beside the run's checkpoints folder)")
    add_min_confidence_argument(parser)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.engine.evaluate import evaluate_checkpoint
    from cagnet.report.tables import format_scores_line
    overrides = list(arguments.overrides)
    if arguments.min_confidence:  # scored apart: min_confidence.json, never the main scores
        overrides.append(f"eval.min_confidence={arguments.min_confidence}")
    scores, out_dir = evaluate_checkpoint(arguments.checkpoint, arguments.config, overrides,
                                          arguments.output_dir)
    print(format_scores_line(scores))
    for name, values in scores["protocols"].items():
        print(f"  protocol {name:8s} {format_scores_line(values)}")
    print(f"report written to {out_dir}")
    return 0
