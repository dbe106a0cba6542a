"""Calibrated stacking (SPNet-c, method.md §7) for any model with `segment()`: T is subtracted
from every SEEN class's softmax probability before the argmax, and chosen (best hIoU, ties: the
smallest T) on a model trained without the split's validation classes, which play the unseen
ones (`validation_split`), never on the test set's unseen classes.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cagnet.datasets.splits import ClassSplit
from cagnet.engine.evaluate import predictions_for_labels
from cagnet.errors import ConfigError, DataError
from cagnet.metrics import confusion_matrix, zero_shot_scores
from cagnet.utils.io import atomic_write_text

CURVE_KEYS = ("hiou", "miou", "miou_seen", "miou_unseen")


def calibrated_scores(logits: torch.Tensor, num_seen: int, temperature: float) -> torch.Tensor:
    """logits (B, K, h, w) -> softmax probabilities minus T on the seen channels 0..S-1."""
    probabilities = torch.softmax(logits.float(), dim=1)
    offset = torch.zeros(logits.shape[1], dtype=probabilities.dtype, device=logits.device)
    offset[:num_seen] = temperature
    return probabilities - offset.view(1, -1, *([1] * (logits.dim() - 2)))


def parse_values(text: str) -> list[float]:
    """`start:stop:step` (stop included when it falls on the grid) or a comma list
    (`0,0.2,0.6`) -> the T values, sorted, each rounded to 6 decimals."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [start + index * step for index in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--values {text!r}: expected start:stop:step with step > 0 and "
                          "stop >= start, or a comma-separated list of numbers") from None
    if not values or any(not math.isfinite(value) for value in values):
        raise ConfigError(f"--values {text!r}: expected at least one finite value")
    return sorted({round(value, 6) for value in values})


@dataclass
class SweepTarget:
    """A model and the test data one calibration curve is measured on (classes in model order:
    seen 0..S-1, then the classes that play the unseen ones)."""

    model: nn.Module
    loader: Iterable[dict]
    num_seen: int
    num_classes: int
    protocol: str
    warp_size: int
    device: torch.device
    max_images: int = 0


@torch.no_grad()
def sweep_confusions(target: SweepTarget, values: Sequence[float]) -> torch.Tensor:
    """(V, K, K) confusion matrices, one per T in `values`, from one forward pass per batch.
    Predictions and labels are paired as the evaluator pairs them (`predictions_for_labels`);
    with `full` the logits are first upsampled (bilinear) to the label, so T = 0 reproduces the
    uncalibrated evaluation exactly; with `original` they stay on the feature grid."""
    target.model.eval()
    size, images_seen = target.num_classes, 0
    confusions = torch.zeros(len(values), size, size, dtype=torch.long)
    for batch in target.loader:
        logits = target.model.segment(batch["image"].to(target.device)).float()
        labels = batch["label"]
        labels = list(labels) if isinstance(labels, torch.Tensor) else labels
        pairs = predictions_for_labels(logits, labels, target.protocol, target.warp_size)
        for index, (_, label) in enumerate(pairs):
            scores = logits[index:index + 1].float()
            if target.protocol == "full":
                scores = F.interpolate(scores, size=label.shape[-2:], mode="bilinear",
                                       align_corners=False)
            for position, temperature in enumerate(values):
                prediction = calibrated_scores(scores, target.num_seen, temperature)[0].argmax(0)
                confusions[position] += confusion_matrix(prediction, label, size).cpu()
        images_seen += len(labels)
        if target.max_images and images_seen >= target.max_images:
            break
    return confusions


def calibration_curve(confusions: torch.Tensor, values: Sequence[float], num_seen: int
                      ) -> list[dict]:
    """One row per T: `temperature` and the `CURVE_KEYS` scores."""
    seen, unseen = list(range(num_seen)), list(range(num_seen, confusions.shape[-1]))
    rows = []
    for temperature, confusion in zip(values, confusions):
        scores = zero_shot_scores(confusion, seen, unseen)
        rows.append({"temperature": float(temperature), **{key: scores[key] for key in CURVE_KEYS}})
    return rows


def pick_temperature(curve: Sequence[dict]) -> float:
    """The T with the highest hIoU (NaN counts as lowest; ties: the smallest T)."""
    if not curve:
        raise ConfigError("calibration: no T value to choose from")

    def key(row: dict) -> tuple[float, float]:
        return (-math.inf if row["hiou"] != row["hiou"] else row["hiou"], -row["temperature"])
    return float(max(curve, key=key)["temperature"])


def validation_split(split: ClassSplit) -> ClassSplit:
    """The split of the calibration model: seen = seen minus validation classes, unseen = the
    validation classes; the real unseen classes are in neither (ignored, 255, everywhere)."""
    if not split.validation_ids:
        raise DataError("calibration needs validation classes: the split file has no "
                        "'validation:' list (a subset of 'seen' held out to choose T)")
    seen = tuple(i for i in split.seen_ids if i not in split.validation_ids)
    return ClassSplit(split.class_names, seen, tuple(split.validation_ids), ())


def write_split_file(split: ClassSplit, path: str | Path, comment: str) -> Path:
    """Write `split` as a split YAML (class names) with a leading comment."""
    names = {key: [split.class_names[i] for i in ids] for key, ids in
             (("seen", split.seen_ids), ("unseen", split.unseen_ids),
              ("validation", split.validation_ids)) if ids or key != "validation"}
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return atomic_write_text(path, header + yaml.safe_dump(names, sort_keys=False))
