"""`cagnet predict`: segment images (a file or a folder) and draw the results."""

import argparse

from cagnet.commands.common import (add_command, add_device_arguments, add_extension_arguments,
                                    extension_inputs, resolve_runtime)
from cagnet.errors import CagnetError


def add_parser(commands) -> None:
    parser = add_command(commands, "predict", "segment images of any size with a trained "
                         "model: label PNGs, overlays and legends", """
cagnet predict --checkpoint runs/demo/finetune/checkpoints/last.pt --input photos/ --out preds/
cagnet predict --checkpoint last.pt --input photos/ --pattern '*.jpg' --out preds/ --panel
cagnet predict --checkpoint last.pt --input photo.jpg --out preds/ --min-confidence 0.5
cagnet predict --checkpoint last.pt --input photos/ --out preds/ --add-classes zebra \\
    --word-vectors GoogleNews-vectors-negative300.bin""", run,
                         conflict_handler="resolve")  # see --batch-size
    parser.add_argument("--checkpoint", required=True, help="a checkpoint file of any method")
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    add_device_arguments(parser)
    parser.add_argument("--save-logits", action="store_true", help="also write "
                        "<name>_logits.npy: float32 (K, h, w) logits on the feature grid")
    parser.add_argument("--panel", action="store_true", help="also write <name>_panel.png: "
                        "image | overlay | legend")
    parser.add_argument("--alpha", type=float, default=0.5, help="colour weight of overlays")
    parser.add_argument("--pattern", default=None, metavar="GLOB", help="in a folder, only the "
                        "files matching GLOB, e.g. '*_image.png' (default: image suffixes)")
    add_min_confidence_argument(parser)
    add_extension_arguments(parser.add_argument_group(
        "new classes", "segment classes the model never saw, added from their word vectors "
        "for this run only (`cagnet extend` saves them)"), required=False)
    # Replaces the extension's --batch-size: added classes finetune with the checkpoint's
    # train.batch_size (`cagnet extend` sets it).
    parser.add_argument("--batch-size", dest="images_per_batch", type=int, default=1,
                        metavar="N", help="images per forward pass (default 1)")
    parser.set_defaults(batch_size=None)


def add_min_confidence_argument(parser: argparse.ArgumentParser) -> None:
    """--min-confidence (shared with `cagnet eval`)."""
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                        help="pixels whose max softmax probability is below P get no class "
                        "(label value 0, black, 'none'); default 0 = off")


def run(arguments: argparse.Namespace) -> int:
    from cagnet.engine.checkpoint import load_model
    from cagnet.inference.extend import extend_loaded_model, parse_class_list
    from cagnet.inference.predict import predict_paths
    from cagnet.models.fold import inference_model
    if (arguments.word_vectors or arguments.embeddings) and not arguments.add_classes:
        raise CagnetError("--word-vectors / --embeddings describe new classes: give their "
                          "names with --add-classes")
    if not 0.0 <= arguments.alpha <= 1.0:
        raise CagnetError(f"--alpha: expected a weight in [0, 1], got {arguments.alpha}")
    if not 0.0 <= arguments.min_confidence < 1.0 or arguments.images_per_batch < 1:
        raise CagnetError(f"--min-confidence: expected a probability in [0, 1), got "
                          f"{arguments.min_confidence}; --batch-size: expected >= 1, got "
                          f"{arguments.images_per_batch}")
    device = resolve_runtime(arguments)
    loaded = load_model(arguments.checkpoint)
    loaded.model.to(device)
    if arguments.add_classes:
        sources, embeddings, settings = extension_inputs(arguments)
        names = parse_class_list(arguments.add_classes, loaded.class_names)
        extend_loaded_model(loaded, names, sources, embeddings, settings)
    inference_model(loaded.model, loaded.config.eval.channels_last)
    summary = predict_paths(loaded, arguments.input, arguments.out, arguments.save_logits,
                            arguments.panel, arguments.alpha, source=arguments.checkpoint,
                            pattern=arguments.pattern, batch_size=arguments.images_per_batch,
                            min_confidence=arguments.min_confidence)
    print(f"{len(summary['images'])} image(s) segmented into {arguments.out} over "
          f"{len(loaded.class_names)} classes"
          + (f"; {len(summary['skipped'])} unreadable skipped" if summary["skipped"] else ""))
    return 0
