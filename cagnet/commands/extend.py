"""`cagnet extend`: add classes to a trained model from their names (and a few `--shots`)."""

import argparse

from cagnet.commands.common import (add_command, add_device_arguments, add_extension_arguments,
                                    extension_inputs, resolve_runtime)

EXAMPLES = """
cagnet extend --checkpoint runs/no_py/finetune/checkpoints/last.pt --add-classes "plain yellow" \\
    --word-vectors runs/demo/shapes/word_vectors.txt --out runs/no_py/extended.pt
# the same, also learning from 5 labelled images (SHOTS/images/<id>.jpg, SHOTS/masks/<id>.png
# index PNGs, SHOTS/class_names.txt naming their values):
cagnet extend ... --shots SHOTS --out runs/no_py/extended_5shot.pt
# the same, after training the whole network on the shots (mixed with its training images):
cagnet extend ... --shots SHOTS --network-iterations 200 --out runs/no_py/extended_trained.pt
"""


def add_parser(commands) -> None:
    parser = add_command(commands, "extend", "add classes to a trained model from their names "
                         "(word vectors), optionally with a few labelled images", EXAMPLES, run)
    parser.add_argument("--checkpoint", required=True, help="the trained checkpoint")
    add_extension_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="the extended checkpoint to write (.pt); "
                        "a <stem>.split.yaml with its class order is written beside it")
    parser.add_argument("--class-order", metavar="SPLIT.yaml", help="put the classes in this "
                        "split file's order (seen, then unseen), e.g. the dataset split that "
                        "lists the new classes, so `cagnet eval` can use it as is")
    parser.add_argument("--data-root", metavar="DIR", help="the checkpoint's dataset folder, "
                        "if it has moved since training (the training images that --shots "
                        "replays and --network-iterations trains on)")
    add_device_arguments(parser)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.inference.extend import extend_checkpoint
    sources, embeddings, settings = extension_inputs(arguments)
    summary = extend_checkpoint(arguments.checkpoint, arguments.out, arguments.add_classes,
                                sources, embeddings, settings, resolve_runtime(arguments),
                                arguments.class_order, arguments.data_root)
    print(f"{arguments.out}: {summary['classes_before']} -> {summary['classes_after']} classes "
          f"(added {', '.join(summary['added_now'])}); classifier loss "
          f"{summary['loss_first'] or float('nan'):.4f} -> {summary['loss_last']:.4f}")
    if summary.get("shot_images"):
        print(f"shots: {len(summary['shot_images'])} images; real pixels per class "
              f"{summary['real_pixels_per_class']}")
    print(f"class order: {summary['split_file']} (evaluate with `cagnet eval --checkpoint "
          f"{arguments.out}`; a dataset whose class-name file names the new classes is needed)")
    return 0
