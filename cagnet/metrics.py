"""Segmentation metrics as pure functions over one confusion matrix.

The evaluator accumulates a single `(N, N)` confusion matrix over the whole test set with
`confusion_matrix` (rows = ground truth, columns = prediction), all-reduces it under DDP (a sum
of integer counts, so exact), and then calls `zero_shot_scores` once. Every mean is taken with
`nanmean` over the classes of a set whose IoU is defined (SPNet/CaGNet protocol), and
hIoU = 2 * S * U / (S + U) (see `docs/benchmarks.md` §4).

Class indices are positions in the confusion matrix, i.e. the model's class order: seen classes
0..S-1 then unseen classes S..S+U-1. Background and void never appear: they carry the label 255
(`ignore_index`) and are dropped before counting.

This module imports only numpy and torch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["confusion_matrix", "harmonic_mean", "zero_shot_scores"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Count (ground truth, prediction) pairs over the valid pixels of a batch.

    A pixel counts when its target is in `[0, num_classes)` and differs from `ignore_index`;
    every other pixel (255, or any out-of-range label) is dropped whatever its prediction.
    The counts come from one `torch.bincount(num_classes * target + pred)`, on the device of
    the inputs, so a matrix accumulated per process can be summed with one
    `torch.distributed.all_reduce`: integer addition is exact, so the all-reduced matrix is
    identical to the one a single process would have counted.

    Args:
        pred: Predicted class indices, integer tensor of any shape, e.g. `(B, H, W)`.
        target: Ground-truth class indices, integer tensor of the same shape as `pred`.
        num_classes: N, the number of classes (seen + unseen) the model predicts.
        ignore_index: Target value that never counts (255 marks background/void/unseen-at-train).

    Returns:
        int64 tensor `(N, N)` on the inputs' device; entry `[t, p]` = number of counted pixels
        with ground truth t and prediction p.

    Raises:
        ValueError: shapes differ, a tensor is not integer, `num_classes < 1`, or a counted pixel
            has a prediction outside `[0, num_classes)` (a bug upstream, never silently dropped).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape "
                         f"{tuple(target.shape)}")
    for name, tensor in (("pred", pred), ("target", target)):
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {tensor.dtype}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    target = target[valid]
    pred = pred[valid]
    out_of_range = (pred < 0) | (pred >= num_classes)
    if bool(out_of_range.any()):
        value = int(pred[out_of_range][0])
        raise ValueError(f"prediction value {value} is outside [0, {num_classes}) at a pixel "
                         f"with a valid target; predictions must be class indices")
    counts = torch.bincount(num_classes * target + pred, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean 2ab / (a + b) of two scores, as used for hIoU.

    Returns 0.0 when a + b == 0 (both scores are 0) and NaN when either score is NaN (a class
    set with no valid class has no score, so neither has the harmonic mean).
    """
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a + b == 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


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
    """Generalized zero-shot scores of one confusion matrix.

    Indices in `seen` / `unseen` are positions in the confusion matrix (normally
    `range(S)` and `range(S, S + U)`); background and void are never among them because they
    are labelled 255 and never counted. Per class c:
    IoU_c = TP / (TP + FP + FN), NaN when the union is empty (c occurs neither in the ground
    truth nor in the predictions); accuracy_c = TP / (TP + FN), NaN when c has no ground-truth
    pixel. Set means are `nanmean` over the set (`miou` over seen + unseen), so a class that
    never occurs does not count. A set with no defined IoU (for example an empty set) has
    mIoU NaN, and then hIoU is NaN too; hIoU is 0 when both set means are 0.

    Args:
        confusion: `(N, N)` counts, rows = ground truth, columns = prediction (any device).
        seen: Indices of the seen classes.
        unseen: Indices of the unseen classes (disjoint from `seen`).

    Returns:
        Plain Python values: `hiou`, `miou`, `miou_seen`, `miou_unseen`, `pixel_acc`
        (trace / total over the whole matrix, NaN if empty), `mean_acc` (nanmean of the
        per-class accuracy over seen + unseen), `iou` and `accuracy` (lists of N floats, in
        matrix order), `num_pixels` (int, total count).

    Raises:
        ValueError: the matrix is not square 2-D, has negative counts, or an index is out of
            range, duplicated, or both seen and unseen.
    """
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
    predicted = matrix.sum(axis=0)
    union = ground_truth + predicted - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        accuracy = np.where(ground_truth > 0, true_positive / ground_truth, np.nan)
    total = matrix.sum()

    evaluated = seen + unseen
    miou_seen = _nanmean(iou[seen])
    miou_unseen = _nanmean(iou[unseen])
    return {
        "hiou": harmonic_mean(miou_seen, miou_unseen),
        "miou": _nanmean(iou[evaluated]),
        "miou_seen": miou_seen,
        "miou_unseen": miou_unseen,
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else math.nan,
        "mean_acc": _nanmean(accuracy[evaluated]),
        "iou": [float(value) for value in iou],
        "accuracy": [float(value) for value in accuracy],
        "num_pixels": int(total),
    }
