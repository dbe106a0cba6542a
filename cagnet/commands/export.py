"""`cagnet export`: write a checkpoint's inference model as ONNX or TorchScript."""

import argparse

EXAMPLES = """examples:
  cagnet export --checkpoint runs/voc/checkpoints/final.pt --format onnx --out cagnet.onnx
  cagnet export --checkpoint runs/voc/checkpoints/final.pt --format torchscript --out cagnet.pt

Input (1, 3, S, S) float32 BGR minus the mean, S = the checkpoint's eval.warp_size; output the
real-class logits on the stride-8 grid; <out>.json holds S, the mean and the class names.
ONNX needs the optional packages: pip install -e ".[export]"
"""


def add_parser(commands) -> None:
    parser = commands.add_parser("export", help="write the folded inference model as ONNX or "
                                 "TorchScript", epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file of any method")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"),
                        help="onnx (needs the `export` extra) or torchscript")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.inference.export import export_checkpoint
    out = export_checkpoint(arguments.checkpoint, arguments.format, arguments.out)
    print(f"{arguments.format} model written to {out} (and {out}.json)")
    return 0
