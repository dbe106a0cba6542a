"""`cagnet predict`: segment images (a file or a folder) and draw the results."""

from __future__ import annotations

import argparse

from cagnet.commands.common import (add_device_arguments, add_extension_arguments,
                                    extension_inputs, resolve_runtime)
from cagnet.errors import CagnetError


def add_parser(commands) -> None:
    parser = commands.add_parser("predict", help="segment images of any size with a trained "
                                 "model: label PNGs, overlays and legends")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    add_device_arguments(parser)
    parser.add_argument("--save-logits", action="store_true", help="also write "
                        "<name>_logits.npy: float32 (K, h, w) logits on the feature grid")
    parser.add_argument("--panel", action="store_true", help="also write <name>_panel.png: "
                        "image | overlay | legend")
    parser.add_argument("--alpha", type=float, default=0.5, help="colour weight of overlays")
    add_extension_arguments(parser, required=False)
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from cagnet.engine.checkpoint import load_model
    from cagnet.inference.extend import extend_loaded_model, parse_class_list
    from cagnet.inference.predict import predict_paths

    if (arguments.word_vectors or arguments.embeddings) and not arguments.add_classes:
        raise CagnetError("--word-vectors / --embeddings describe new classes: give their "
                          "names with --add-classes")
    if not 0.0 <= arguments.alpha <= 1.0:
        raise CagnetError(f"--alpha: expected a weight in [0, 1], got {arguments.alpha}")
    device = resolve_runtime(arguments)
    loaded = load_model(arguments.checkpoint)
    loaded.model.to(device)
    if arguments.add_classes:
        sources, embeddings, settings = extension_inputs(arguments)
        names = parse_class_list(arguments.add_classes, loaded.class_names)
        extend_loaded_model(loaded, names, sources, embeddings, settings)
    summary = predict_paths(loaded, arguments.input, arguments.out, arguments.save_logits,
                            arguments.panel, arguments.alpha, source=arguments.checkpoint)
    print(f"{len(summary['images'])} image(s) segmented into {arguments.out} over "
          f"{len(loaded.class_names)} classes"
          + (f"; {len(summary['skipped'])} unreadable skipped" if summary["skipped"] else ""))
    return 0
