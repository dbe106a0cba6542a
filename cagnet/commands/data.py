"""`cagnet data ...`: dataset tools."""

from __future__ import annotations

import argparse


def add_parser(commands) -> None:
    parser = commands.add_parser("data", help="dataset tools")
    tools = parser.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    shapes = tools.add_parser("shapes", help="write the synthetic shapes benchmark")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--num-train", type=int, default=1200)
    shapes.add_argument("--num-val", type=int, default=240)
    shapes.add_argument("--num-pretrain", type=int, default=3200)
    shapes.set_defaults(handler=run_shapes)


def run_shapes(arguments: argparse.Namespace) -> int:
    from cagnet.datasets.shapes import generate_shapes_benchmark

    summary = generate_shapes_benchmark(arguments.out, seed=arguments.seed,
                                        num_train=arguments.num_train, num_val=arguments.num_val,
                                        num_pretrain=arguments.num_pretrain)
    print(f"shapes benchmark written to {arguments.out}: {len(summary['seen'])} seen, "
          f"{len(summary['unseen'])} unseen classes")
    return 0
