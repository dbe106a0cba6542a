"""`cagnet pretrain`: image-level pretraining of the backbone trunk."""

from __future__ import annotations

import argparse

from cagnet.commands.common import add_command, add_config_arguments


def add_parser(commands) -> None:
    parser = add_command(commands, "pretrain", "image-level pretraining of the backbone trunk "
                         "on a labelled image corpus (writes an init file)", """
cagnet pretrain --config shapes --set pretrain.corpus=data/shapes/pretrain \\
    --output-dir runs/pretrain
cagnet train --config shapes --set model.init=runs/pretrain/backbone_init.pt ...""")
    add_config_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="run directory; the init file is "
                        "written to OUTPUT_DIR/backbone_init.pt (for model.init)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in --output-dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run directory that holds checkpoints")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.config import load_config
    from cagnet.engine.pretrain import INIT_FILE, pretrain

    config = load_config(arguments.config, arguments.overrides)
    summary = pretrain(config, arguments.output_dir, resume=arguments.resume,
                       overwrite=arguments.overwrite)
    print(f"pretrained backbone written to {arguments.output_dir}/{INIT_FILE}: held-out "
          f"accuracy {summary['held_out_accuracy']:.3f}")
    return 0
