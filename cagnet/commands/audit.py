"""`cagnet audit`: prove that no unseen-class label reaches a loss (exit status 1 if one could)."""

import argparse

from cagnet.commands.common import add_command, add_config_arguments


def add_parser(commands) -> None:
    parser = add_command(commands, "audit", "run the training data pipeline over the training "
                         "set and check that every target is a seen class or 255 (writes "
                         "audit.json)", """
cagnet audit --config voc12 --set data.root=/data/VOCdevkit/VOC2012 --out voc12_audit.json
cagnet audit --config experiments/my_data.yaml --max-images 200""", run)
    add_config_arguments(parser)
    parser.add_argument("--max-images", type=int, default=0, help="audit only the first N "
                        "training images (0 = all)")
    parser.add_argument("--out", default="audit.json", help="JSON report (default audit.json)")


def run(arguments: argparse.Namespace) -> int:
    from cagnet.config import load_config
    from cagnet.tools.audit import audit_training_data, format_audit
    from cagnet.utils.io import atomic_write_json
    config = load_config(arguments.config, arguments.overrides)
    report = audit_training_data(config, arguments.max_images, show_progress=True)
    print(format_audit(report))
    atomic_write_json(arguments.out, report.to_dict())
    print(f"audit written to {arguments.out}")
    return 0 if report.ok else 1
