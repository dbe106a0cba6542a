"""Segmentation metrics as pure functions over one confusion matrix whose indices are the model's
class order (seen, then unseen); background and void (255) are never counted."""

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["confusion_matrix", "harmonic_mean", "zero_shot_scores"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Int64 counts (N, N): `[t, p]` = pixels with target t in [0, N) (not `ignore_index`) and
    prediction p; raises ValueError when a counted prediction is outside [0, N)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape "
                         f"{tuple(target.shape)}")
    for name, tensor in (("pred", pred), ("target", target)):
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    target, pred = target.reshape(-1).long(), pred.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    target, pred = target[valid], pred[valid]
    out_of_range = (pred < 0) | (pred >= num_classes)
    if bool(out_of_range.any()):
        raise ValueError(f"prediction value {int(pred[out_of_range][0])} is outside "
                         f"[0, {num_classes}) at a pixel with a valid target; predictions must "
                         "be class indices")
    counts = torch.bincount(num_classes * target + pred, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b) (hIoU): 0.0 when a + b == 0, NaN when either score is NaN."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return 0.0 if a + b == 0.0 else 2.0 * a * b / (a + b)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a RuntimeWarning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _check_indices(name: str, indices: Sequence[int], num_classes: int) -> list[int]:
    checked = [int(index) for index in indices]
    for index in checked:
        if not 0 <= index < num_classes:
            raise ValueError(f"{name} class index {index} is outside the confusion matrix "
                             f"[0, {num_classes})")
    if len(set(checked)) != len(checked):
        raise ValueError(f"{name} class indices contain duplicates: {checked}")
    return checked


def zero_shot_scores(confusion: torch.Tensor | np.ndarray, seen: Sequence[int],
                     unseen: Sequence[int]) -> dict:
    """Generalized zero-shot scores of a confusion matrix (N, N) (rows = ground truth) for the
    disjoint indices `seen` and `unseen` (docs/benchmarks.md §4); NaN where undefined, means over
    the defined classes. Returns `hiou`, `miou`, `miou_seen`, `miou_unseen`, `pixel_acc`,
    `mean_acc`, `iou` and `accuracy` (N floats each) and `num_pixels` as Python values."""
    if isinstance(confusion, torch.Tensor):
        confusion = confusion.detach().cpu().numpy()
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (N, N), got shape {matrix.shape}")
    if (matrix < 0).any():
        raise ValueError("confusion matrix has negative counts")
    num_classes = matrix.shape[0]
    seen = _check_indices("seen", seen, num_classes)
    unseen = _check_indices("unseen", unseen, num_classes)
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise ValueError(f"class indices {overlap} are both seen and unseen")
    true_positive = np.diag(matrix)
    ground_truth = matrix.sum(axis=1)
    union = ground_truth + matrix.sum(axis=0) - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        accuracy = np.where(ground_truth > 0, true_positive / ground_truth, np.nan)
    total = matrix.sum()
    evaluated = seen + unseen
    miou_seen, miou_unseen = _nanmean(iou[seen]), _nanmean(iou[unseen])
    return {"hiou": harmonic_mean(miou_seen, miou_unseen), "miou": _nanmean(iou[evaluated]),
            "miou_seen": miou_seen, "miou_unseen": miou_unseen,
            "pixel_acc": float(true_positive.sum() / total) if total > 0 else math.nan,
            "mean_acc": _nanmean(accuracy[evaluated]), "iou": [float(value) for value in iou],
            "accuracy": [float(value) for value in accuracy], "num_pixels": int(total)}
