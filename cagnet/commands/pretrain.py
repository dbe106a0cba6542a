"""`cagnet pretrain`: image-level pretraining of the backbone trunk."""

from __future__ import annotations

import argparse

from cagnet.commands.common import add_config_arguments
from cagnet.errors import CagnetError


def add_parser(commands) -> None:
    parser = commands.add_parser("pretrain", help="image-level pretraining of the backbone "
                                 "trunk on a labelled image corpus (writes an init checkpoint)")
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="init checkpoint to write (.pt)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.builders import resolve_device
    from cagnet.config import load_config
    from cagnet.engine.pretrain import pretrain_backbone
    from cagnet.models import DeepLabV2

    config = load_config(arguments.config, arguments.overrides)
    if not config.pretrain.corpus:
        raise CagnetError("pretrain.corpus: no corpus folder configured")
    backbone = DeepLabV2(blocks_per_stage=tuple(config.model.blocks_per_stage),
                         base_width=config.model.base_width, embed_dim=8,
                         aspp_dilations=tuple(config.model.aspp_dilations))
    summary = pretrain_backbone(
        backbone, config.pretrain.corpus, arguments.out, image_size=config.pretrain.image_size,
        iterations=config.pretrain.iterations, batch_size=config.pretrain.batch_size,
        lr=config.pretrain.lr, momentum=config.pretrain.momentum,
        weight_decay=config.pretrain.weight_decay, mean_bgr=config.data.mean_bgr,
        seed=config.train.seed, device=resolve_device(config.train.device))
    print(f"pretrained trunk written to {arguments.out}: held-out accuracy "
          f"{summary['held_out_accuracy']:.3f}")
    return 0
