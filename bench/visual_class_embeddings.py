"""Visual class embeddings: a diagnostic of the semantic side of a zero-shot benchmark.

    python bench/visual_class_embeddings.py --config msrc --set data.root=datasets/msrc \
        --out runs/msrc_visual.npy

Each class's row is the mean feature of the recipe's ImageNet trunk (`model.trunk` with its
`model.pretrained` weights, before any training) over the pixels labelled with that class in
`--list` (default: the recipe's training list), centred over the classes and L2-normalised:
one row per line of the class-name file (every class needs labelled pixels there), written
with its sidecar as `cagnet embed` writes its matrices. Train and compare with `--set
embeddings.path=runs/msrc_visual.npy` to see how far the rest of the pipeline (backbone
training, generator, classifier, the generalized evaluation) gets when the class embeddings say
what the classes look like instead of what their names co-occur with.

It reads the labels of the unseen classes, so it is a reference, never a zero-shot method: it
shows what class embeddings that describe appearance would give, and nothing is tuned on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from cagnet.class_embeddings import save_class_embeddings  # noqa: E402
from cagnet.config import load_config  # noqa: E402
from cagnet.datasets.build import build_dataset, build_split  # noqa: E402
from cagnet.datasets.splits import ClassSplit  # noqa: E402
from cagnet.errors import CagnetError  # noqa: E402
from cagnet.models.trunks import build_trunk  # noqa: E402


def class_feature_sums(trunk: torch.nn.Module, dataset, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per class index of the dataset's labels: the sum of the trunk's features over its
    labelled pixels (labels nearest-sampled to the feature grid) and the pixel count."""
    sums, counts = None, np.zeros(num_classes)
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset[index]
            features = trunk(sample["image"][None])[0]
            label = F.interpolate(sample["label"][None, None].float(), size=features.shape[1:],
                                  mode="nearest")[0, 0].long()
            if sums is None:
                sums = np.zeros((num_classes, features.shape[0]))
            for k in range(num_classes):
                selected = label == k
                if selected.any():
                    sums[k] += features[:, selected].sum(1).double().numpy()
                    counts[k] += int(selected.sum())
    return sums, counts


def centred_unit_rows(means: np.ndarray) -> np.ndarray:
    """Rows minus their mean, each scaled to unit length."""
    centred = means - means.mean(0, keepdims=True)
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the recipe (name or file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="recipe override (repeatable)")
    parser.add_argument("--list", help="image list (default: the recipe's data.train_list)")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        split = build_split(config)
        names = split.class_names
        # every class id labelled as itself (as if all were seen), whatever the split
        every_class = ClassSplit(names, tuple(range(len(names))), ())
        data = dataclasses.replace(config.data, val_list=args.list or config.data.train_list)
        dataset = build_dataset(data, every_class, config.train.seed, part="test",
                                eval_warp=config.eval.warp_size)
        model = config.model
        if model.trunk == "deeplabv2_resnet101":
            raise SystemExit("error: model.trunk: visual embeddings need a trunk with its own "
                             "pretrained weights (torchvision:, timm: or python:), not "
                             "deeplabv2_resnet101")
        trunk = build_trunk(model.trunk, model.pretrained, model.trunk_endpoint,
                            model.output_stride, model.normalization, data.mean_bgr).eval()
    except CagnetError as error:
        raise SystemExit(f"error: {error}") from None
    torch.set_num_threads(config.train.threads or torch.get_num_threads())
    sums, counts = class_feature_sums(trunk, dataset, len(names))
    missing = [name for name, count in zip(names, counts) if count == 0]
    if missing:
        raise SystemExit(f"error: no labelled pixel of {', '.join(missing)} in the "
                         f"{len(dataset)} images of {data.val_list}: every class needs a row")
    matrix = centred_unit_rows(sums / counts[:, None])
    save_class_embeddings(args.out, matrix, {
        "class_names": list(names), "rule": "visual: the untrained trunk's mean feature per "
        "class over its labelled pixels, centred over the classes, unit rows (reads the unseen "
        "classes' labels: a reference, not a zero-shot method)",
        "trunk": config.model.trunk, "images": data.val_list, "feature_pixels": counts.tolist()})
    print(f"wrote {args.out}: {matrix.shape[0]} classes x {matrix.shape[1]} from "
          f"{len(dataset)} images ({int(counts.sum())} feature pixels)")
    similarity = matrix @ matrix.T
    for label_id in split.unseen_ids:
        nearest = [j for j in np.argsort(-similarity[label_id]) if j != label_id][:3]
        print(f"  {names[label_id]}: " + ", ".join(f"{names[j]} {similarity[label_id, j]:.2f}"
                                                for j in nearest))


if __name__ == "__main__":
    main()
