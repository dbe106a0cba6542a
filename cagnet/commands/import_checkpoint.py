"""`cagnet import-checkpoint`: original CaGNet checkpoints and backbone inits -> cagnet."""

import argparse

from cagnet.commands.common import add_command, add_config_arguments


def add_parser(commands) -> None:
    parser = add_command(
        commands, "import-checkpoint", "convert an original CaGNet checkpoint "
        "(voc12_ourbest.pth ...) into a cagnet checkpoint, or with --init-only a DeepLab-v2 "
        "init / torchvision ResNet into a model.init file", """
cagnet import-checkpoint voc12_ourbest.pth runs/voc12_original.pt --config voc12 \\
    --set data.root=/data/VOCdevkit/VOC2012
cagnet import-checkpoint deeplabv2_resnet101_init.pth init/voc12_init.pt --config voc12 \\
    --init-only""", run)
    parser.add_argument("original", help="the foreign .pth file")
    parser.add_argument("out", help="the cagnet file to write (.pt)")
    add_config_arguments(parser)
    parser.add_argument("--init-only", action="store_true", help="backbone trunk only: "
                        "deeplabv2_resnet101_init.pth or a torchvision resnet50/101 state dict")


def run(arguments: argparse.Namespace) -> int:
    from cagnet.config import load_config
    from cagnet.tools.import_original import import_backbone_init, import_checkpoint
    config = load_config(arguments.config, arguments.overrides)
    if arguments.init_only:
        summary = import_backbone_init(arguments.original, arguments.out, config)
        print(f"backbone init written to {arguments.out}: {summary['consumed']} of "
              f"{summary['keys']} keys used, {len(summary['ignored'])} ignored (heads)")
    else:
        summary = import_checkpoint(arguments.original, arguments.out, config)
        print(f"cagnet checkpoint written to {arguments.out}: all {summary['keys']} keys "
              f"mapped (iteration {summary['iteration']})")
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0
