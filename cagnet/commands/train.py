"""`cagnet pretrain` (backbone trunk), `cagnet train` (step 1), `cagnet finetune` (mixed)."""

import argparse

from cagnet.commands.common import add_command, add_run_arguments
from cagnet.errors import CagnetError


def add_parser(commands) -> None:
    pretrain = add_command(commands, "pretrain", "image-level pretraining of the backbone trunk "
                           "on a labelled image corpus (writes an init file)", """
cagnet pretrain --config shapes --set pretrain.corpus=data/shapes/pretrain \\
    --output-dir runs/pretrain
cagnet train --config shapes --set model.init=runs/pretrain/backbone_init.pt ...""", run_pretrain)
    add_run_arguments(pretrain, "run directory; the init file is written to "
                      "OUTPUT_DIR/backbone_init.pt (for model.init)")
    for name, help_text, examples in (
            ("train", "step 1: train the whole model on seen classes (SPNet recipes: the "
             "SPNet model)", """
cagnet train --config voc12 --set data.root=/data/VOCdevkit/VOC2012 --output-dir runs/voc12
cagnet train --config voc12 --output-dir runs/voc12 --resume
cagnet train --config voc12 --output-dir runs/voc12 --resume --set train.iterations=60000"""),
            ("finetune", "the mixed step-1 / step-2 schedule from a step-1 checkpoint (ZS3Net "
             "recipes: the GMMN and classifier)", """
cagnet finetune --config voc12_finetune --from runs/voc12/checkpoints/last.pt \\
    --output-dir runs/voc12_finetune""")):
        parser = add_command(commands, name, help_text, examples, run)
        add_run_arguments(parser, "run directory: checkpoints/, config.yaml, log.jsonl, "
                          "metrics.json, report.md, tensorboard/")
        if name == "finetune":
            parser.add_argument("--from", dest="init_checkpoint", required=True,
                                help="the step-1 checkpoint")


def run_pretrain(arguments: argparse.Namespace) -> int:
    from cagnet.config import load_config
    from cagnet.engine.pretrain import INIT_FILE, pretrain
    config = load_config(arguments.config, arguments.overrides)
    summary = pretrain(config, arguments.output_dir, resume=arguments.resume,
                       overwrite=arguments.overwrite)
    print(f"pretrained backbone written to {arguments.output_dir}/{INIT_FILE}: held-out "
          f"accuracy {summary['held_out_accuracy']:.3f}")
    return 0


def run(arguments: argparse.Namespace) -> int:
    from cagnet.baselines.spnet import train_spnet
    from cagnet.baselines.zs3net import train_zs3net
    from cagnet.config import load_config
    from cagnet.engine.trainer import train
    config = load_config(arguments.config, arguments.overrides)
    method = config.baseline.method
    options = {"resume": arguments.resume, "overwrite": arguments.overwrite}
    if method == "spnet" and arguments.command == "train":
        train_spnet(config, arguments.output_dir, **options)
        return 0
    if method == "zs3net" and arguments.command == "finetune":
        train_zs3net(config, arguments.output_dir, arguments.init_checkpoint, **options)
        return 0
    if method != "cagnet":
        raise CagnetError(f"baseline.method {method!r}: SPNet trains with `cagnet train`, "
                          "ZS3Net with `cagnet finetune --from STEP1_CHECKPOINT`")
    if arguments.command == "finetune" and config.train.stage != "finetune":
        raise CagnetError(f"{arguments.config}: train.stage is {config.train.stage!r}; "
                          "`cagnet finetune` needs a finetune recipe (train.stage: finetune)")
    if arguments.command == "train" and config.train.stage != "step1":
        raise CagnetError(f"{arguments.config}: train.stage is {config.train.stage!r}; use "
                          "`cagnet finetune --from STEP1_CHECKPOINT` for finetune recipes")
    train(config, arguments.output_dir, init_checkpoint=getattr(arguments, "init_checkpoint", None),
          **options)
    return 0
