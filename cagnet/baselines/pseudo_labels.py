"""Self-training pseudo-labels (method.md §5): rules on logits, and the pseudo-label folder.

Which pixels may be pseudo-labelled: exactly those whose TRAINING label is 255 (the original
CaGNet code's rule). Under the SPNet / CaGNet protocol that is background (VOC's background is
not a class), void, and the pixels of unseen objects; seen-class pixels keep their label.
Background is therefore pseudo-labelled too, as in the original; nothing here reads the true
unseen labels (the training lookup has already turned them into 255).

Rules, on logits (B, K, H, W) in model class order (seen 0..S-1, unseen S..K-1):

- `top_p_rule` (CaGNet): a pixel gets the best-ranked unseen class if one is among its top-p
  predicted classes, else stays 255.
- `top_percent_rule` (ZS3Net): among the pixels whose prediction (argmax) is an unseen class,
  the `percent` % most confident ones of each image (softmax probability of that class) keep it.

`write_pseudo_labels` runs a model over the training images (warped like test images, logits
bilinearly upsampled to the label's resolution) and writes `<id>.png` maps in DATASET ids
(seen ids, pseudo-labelled unseen ids, 255) for `data.pseudo_label_dir`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cagnet.config import Config
from cagnet.datasets import benchmarks
from cagnet.datasets.build import build_dataset
from cagnet.datasets.label_sources import encode_index_png
from cagnet.datasets.segmentation import collate_samples
from cagnet.datasets.splits import ClassSplit
from cagnet.utils.io import atomic_write_bytes, atomic_write_json

IGNORE_INDEX = 255
Rule = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def top_p_rule(logits: torch.Tensor, train_labels: torch.Tensor, num_seen: int,
               top_p: int) -> torch.Tensor:
    """CaGNet's rule. logits (B, K, H, W), train_labels (B, H, W) (0..S-1 or 255) ->
    labels (B, H, W): seen labels kept; 255 pixels get S..K-1 or stay 255."""
    top = logits.topk(min(top_p, logits.shape[1]), dim=1).indices  # (B, p, H, W), best first
    is_unseen = top >= num_seen
    first = is_unseen.float().argmax(dim=1, keepdim=True)  # rank of the best unseen class
    best_unseen = top.gather(1, first).squeeze(1)
    candidate = (train_labels == IGNORE_INDEX) & is_unseen.any(dim=1)
    return torch.where(candidate, best_unseen, train_labels)


def top_percent_rule(logits: torch.Tensor, train_labels: torch.Tensor, num_seen: int,
                     percent: float) -> torch.Tensor:
    """ZS3Net's rule. Per image, of the 255 pixels predicted (argmax) as an unseen class, the
    ceil(percent / 100 * n) most confident keep that class (ties: raster order)."""
    probabilities = torch.softmax(logits.float(), dim=1)
    confidence, prediction = probabilities.max(dim=1)  # (B, H, W)
    output = train_labels.clone()
    for index in range(logits.shape[0]):
        candidate = (train_labels[index] == IGNORE_INDEX) & (prediction[index] >= num_seen)
        positions = torch.nonzero(candidate.flatten()).squeeze(1)
        keep = math.ceil(percent / 100.0 * positions.numel())
        if keep == 0:
            continue
        scores = confidence[index].flatten()[positions]
        chosen = positions[torch.sort(scores, descending=True, stable=True).indices[:keep]]
        output[index].view(-1)[chosen] = prediction[index].flatten()[chosen]
    return output


def rule_from_config(method: str, config: Config) -> tuple[Rule, str]:
    """The rule of `method` ("cagnet": top-p, "zs3net": top-p %) with its parameter from
    `config.self_training`, and a description for the protocol."""
    settings = config.self_training
    rules = {
        "cagnet": (lambda logits, labels, seen: top_p_rule(logits, labels, seen,
                                                          settings.top_p),
                   f"best-ranked unseen class when among the top {settings.top_p} predictions"),
        "zs3net": (lambda logits, labels, seen: top_percent_rule(logits, labels, seen,
                                                                settings.top_percent),
                   f"top {settings.top_percent:g} % most confident unseen predictions per "
                   "image"),
    }
    if method not in rules:
        raise KeyError(f"no self-training rule for {method!r}; valid: {', '.join(rules)}")
    return rules[method]


@torch.no_grad()
def write_pseudo_labels(model: nn.Module, config: Config, split: ClassSplit, rule: Rule,
                        out_dir: str | Path, device: torch.device,
                        diagnostics: bool = True) -> dict:
    """Pseudo-label every training image into `out_dir/<id>.png`; returns (and writes as
    `summary.json`) the pixel counts per class. With `diagnostics`, the true labels are read
    AFTER each map is written, to report where each class's pseudo-labels fell (its own
    objects, other objects, background / void); they are never used for training."""
    to_dataset_ids = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    to_dataset_ids[:len(split.model_ids)] = split.model_ids
    test_lookup = split.test_lookup()
    num_classes = len(split.model_ids)
    # rows: pseudo-labelled class; columns: true class 0..K-1, then background / void
    where = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    # Training images warped like test images, labels through the TRAINING lookup.
    loader = DataLoader(build_dataset(config.data, split, config.train.seed, "train",
                                      eval_warp=config.eval.warp_size),
                        batch_size=config.eval.batch_size, shuffle=False,
                        num_workers=config.data.num_workers, collate_fn=collate_samples)
    position = 0  # the loader is not shuffled: dataset index of the next sample
    model.eval()
    for batch in loader:
        logits = model.segment(batch["image"].to(device)).float()
        for index, (train_label, image_id) in enumerate(zip(batch["label"], batch["id"])):
            upsampled = F.interpolate(logits[index:index + 1], size=train_label.shape[-2:],
                                      mode="bilinear", align_corners=False)
            labels = rule(upsampled, train_label[None].to(device), split.num_seen)[0].cpu()
            pseudo = ((train_label == IGNORE_INDEX) & (labels != IGNORE_INDEX)).numpy()
            atomic_write_bytes(Path(out_dir) / f"{image_id}.png",
                               encode_index_png(to_dataset_ids[labels.numpy()]))
            truth = np.full(pseudo.shape, num_classes, dtype=np.int64)
            if diagnostics:
                truth = test_lookup[benchmarks.read_dataset_label(loader.dataset, position)]
                truth = np.where(truth == IGNORE_INDEX, num_classes, truth).astype(np.int64)
            np.add.at(where, (labels.numpy()[pseudo], truth[pseudo]), 1)
            position += 1
    summary = _pseudo_label_summary(where, split.model_class_names, split.num_seen, diagnostics)
    atomic_write_json(Path(out_dir) / "summary.json", summary)
    return summary


def _pseudo_label_summary(where: np.ndarray, names: list[str], num_seen: int,
                          diagnostics: bool) -> dict:
    """Counts per pseudo-labelled class; with diagnostics, where they fell and the precision
    on object pixels (background / void excluded)."""
    unseen = range(num_seen, len(names))
    summary: dict = {
        "pseudo_labelled_pixels": {names[k]: int(where[k].sum()) for k in unseen},
        "total_pseudo_labelled_pixels": int(where.sum()),
    }
    if diagnostics:
        summary["diagnostics"] = {names[k]: {
            "on_its_own_objects": int(where[k, k]),
            "on_other_objects": int(where[k, :-1].sum() - where[k, k]),
            "on_background_or_void": int(where[k, -1]),
            "object_precision": (float(where[k, k] / where[k, :-1].sum())
                                 if where[k, :-1].sum() else None)} for k in unseen}
        summary["note"] = ("diagnostics compare the pseudo-labels with the hidden true labels "
                           "after they were written; they are never used for training")
    return summary
