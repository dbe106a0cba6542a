"""Self-training pseudo-labels (method.md §5): the rules on logits and the pseudo-label folder.
Only pixels whose TRAINING label is 255 are candidates (the original code's rule): background,
void and unseen objects, whose true labels are never read (the training lookup made them 255).
"""

import math
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cagnet.config import Config
from cagnet.datasets import benchmarks
from cagnet.datasets.build import build_eval_loader
from cagnet.datasets.label_sources import encode_index_png
from cagnet.datasets.splits import IGNORE_INDEX, ClassSplit
from cagnet.utils.io import atomic_write_bytes, atomic_write_json

Rule = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def top_p_rule(logits: torch.Tensor, train_labels: torch.Tensor, num_seen: int,
               top_p: int) -> torch.Tensor:
    """CaGNet's rule. logits (B, K, H, W), train_labels (B, H, W) (0..S-1 or 255) -> labels
    (B, H, W): seen labels kept; a 255 pixel gets the best-ranked unseen class (S..K-1) when one
    is among its top-p predicted classes, else stays 255."""
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
    rules = {"cagnet": (partial(top_p_rule, top_p=settings.top_p), "best-ranked unseen class "
                        f"when among the top {settings.top_p} predictions"),
             "zs3net": (partial(top_percent_rule, percent=settings.top_percent),
                        f"top {settings.top_percent:g} % most confident unseen predictions per "
                        "image")}
    if method not in rules:
        raise KeyError(f"no self-training rule for {method!r}; valid: {', '.join(rules)}")
    return rules[method]


@torch.no_grad()
def write_pseudo_labels(model: nn.Module, config: Config, split: ClassSplit, rule: Rule,
                        out_dir: str | Path, device: torch.device) -> dict:
    """Pseudo-label every training image (warped like a test image, logits upsampled to its
    label) into `out_dir/<id>.png` in DATASET ids (for `data.pseudo_label_dir`); returns (and
    writes as `summary.json`) the pixel counts per class and, read from the true labels AFTER
    each map is written, where they fell (own objects, other objects, background / void)."""
    num_classes, test_lookup = len(split.model_ids), split.test_lookup()
    to_dataset_ids = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    to_dataset_ids[:num_classes] = split.model_ids
    # rows: pseudo-labelled class; columns: true class 0..K-1, then background / void
    where = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    loader = build_eval_loader(config, split, "train")  # labels through the TRAINING lookup
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
            truth = test_lookup[benchmarks.read_dataset_label(loader.dataset, position)]
            truth = np.where(truth == IGNORE_INDEX, num_classes, truth).astype(np.int64)
            np.add.at(where, (labels.numpy()[pseudo], truth[pseudo]), 1)
            position += 1
    summary = _pseudo_label_summary(where, split.model_class_names, split.num_seen)
    atomic_write_json(Path(out_dir) / "summary.json", summary)
    return summary


def _pseudo_label_summary(where: np.ndarray, names: list[str], num_seen: int) -> dict:
    """Counts per pseudo-labelled class, where they fell and the precision on object pixels
    (background / void excluded)."""
    unseen = range(num_seen, len(names))
    return {"pseudo_labelled_pixels": {names[k]: int(where[k].sum()) for k in unseen},
            "total_pseudo_labelled_pixels": int(where.sum()),
            "diagnostics": {names[k]: {
                "on_its_own_objects": int(where[k, k]),
                "on_other_objects": int(where[k, :-1].sum() - where[k, k]),
                "on_background_or_void": int(where[k, -1]),
                "object_precision": (float(where[k, k] / where[k, :-1].sum())
                                     if where[k, :-1].sum() else None)} for k in unseen},
            "note": ("diagnostics compare the pseudo-labels with the hidden true labels after "
                     "they were written; they are never used for training")}
