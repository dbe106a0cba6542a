"""Calibrated stacking (SPNet-c, method.md §7), for any model that exposes `segment()`.

A model trained on seen classes only is over-confident on them. Calibration subtracts a
constant T from the softmax probability of every SEEN class before the argmax:

    prediction = argmax_k (softmax(logits)_k - T · [k < S])

T must be chosen without the test set's unseen classes. SPNet's protocol, implemented here:
hold out some seen classes as *validation* classes (`validation:` in the split file), train a
model on the remaining seen classes only (`validation_split`: the validation classes play the
unseen ones, the real unseen classes are ignored), sweep T on the test images of that model
and keep the T with the best validation hIoU (ties: the smallest T); then apply that T to the
model trained on every seen class. `sweep_confusions` evaluates every T with one forward pass
per batch, pairing predictions and labels exactly as the evaluator does (same protocols, same
resolution as `cagnet eval`; T = 0 gives exactly the uncalibrated scores).
"""

from __future__ import annotations

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


def calibrated_scores(logits: torch.Tensor, num_seen: int, temperature: float) -> torch.Tensor:
    """logits (B, K, h, w) -> softmax probabilities minus T on the seen channels 0..S-1."""
    probabilities = torch.softmax(logits.float(), dim=1)
    offset = torch.zeros(logits.shape[1], dtype=probabilities.dtype, device=logits.device)
    offset[:num_seen] = temperature
    return probabilities - offset.view(1, -1, *([1] * (logits.dim() - 2)))


def calibrated_predictions(logits: torch.Tensor, labels: Sequence[torch.Tensor], protocol: str,
                           warp_size: int, num_seen: int, values: Sequence[float]
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Calibrated predictions at every T, paired with each image's label as the evaluator pairs
    them (`predictions_for_labels`).

    Calibration is applied where the evaluator takes its argmax: with `full`, after the logits
    are bilinearly upsampled to the label's resolution (softmax of the upsampled logits, minus
    T, argmax), so T = 0 reproduces the uncalibrated evaluation exactly; with `original`, on
    the feature grid.

    Args:
        logits: (B, K, h, w) real-class logits; labels: B tensors (H_i, W_i).
    Returns:
        B pairs ((V, H', W') predictions, one per T in `values`; (H', W') label).
    """
    pairs = predictions_for_labels(logits, labels, protocol, warp_size)
    results = []
    for index, (_, label) in enumerate(pairs):
        scores = logits[index:index + 1].float()
        if protocol == "full":
            scores = F.interpolate(scores, size=label.shape[-2:], mode="bilinear",
                                   align_corners=False)
        predictions = torch.stack([calibrated_scores(scores, num_seen, temperature)[0].argmax(0)
                                   for temperature in values])
        results.append((predictions, label))
    return results


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
    """(V, K, K) confusion matrices, one per T in `values`, from one forward pass per batch."""
    target.model.eval()
    confusions = torch.zeros(len(values), target.num_classes, target.num_classes,
                             dtype=torch.long)
    images_seen = 0
    for batch in target.loader:
        logits = target.model.segment(batch["image"].to(target.device)).float()
        labels = batch["label"]
        labels = list(labels) if isinstance(labels, torch.Tensor) else labels
        for predictions, label in calibrated_predictions(logits, labels, target.protocol,
                                                         target.warp_size, target.num_seen,
                                                         values):
            for index, prediction in enumerate(predictions):
                confusions[index] += confusion_matrix(prediction, label,
                                                      target.num_classes).cpu()
        images_seen += len(labels)
        if target.max_images and images_seen >= target.max_images:
            break
    return confusions


def calibration_curve(confusions: torch.Tensor, values: Sequence[float], num_seen: int
                      ) -> list[dict]:
    """One row per T: `temperature`, `hiou`, `miou`, `miou_seen`, `miou_unseen`."""
    num_classes = confusions.shape[-1]
    seen, unseen = list(range(num_seen)), list(range(num_seen, num_classes))
    rows = []
    for temperature, confusion in zip(values, confusions):
        scores = zero_shot_scores(confusion, seen, unseen)
        rows.append({"temperature": float(temperature),
                     **{key: scores[key] for key in ("hiou", "miou", "miou_seen",
                                                     "miou_unseen")}})
    return rows


def pick_temperature(curve: Sequence[dict]) -> float:
    """The T with the highest hIoU (NaN counts as lowest; ties: the smallest T)."""
    if not curve:
        raise ConfigError("calibration: no T value to choose from")

    def key(row: dict) -> tuple[float, float]:
        hiou = row["hiou"]
        return (-math.inf if hiou != hiou else hiou, -row["temperature"])

    return float(max(curve, key=key)["temperature"])


def validation_split(split: ClassSplit) -> ClassSplit:
    """The split of the calibration model: seen = seen minus validation classes, unseen = the
    validation classes; the real unseen classes are in neither (ignored, 255, everywhere)."""
    if not split.validation_ids:
        raise DataError("calibration needs validation classes: the split file has no "
                        "'validation:' list (a subset of 'seen' held out to choose T)")
    seen = tuple(class_id for class_id in split.seen_ids if class_id not in
                 split.validation_ids)
    return ClassSplit(split.class_names, seen, tuple(split.validation_ids), ())


def write_split_file(split: ClassSplit, path: str | Path, comment: str) -> Path:
    """Write `split` as a split YAML (class names) with a leading comment."""
    names = {key: [split.class_names[i] for i in ids] for key, ids in
             (("seen", split.seen_ids), ("unseen", split.unseen_ids),
              ("validation", split.validation_ids)) if ids or key != "validation"}
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return atomic_write_text(path, header + yaml.safe_dump(names, sort_keys=False))
