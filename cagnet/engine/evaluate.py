"""Single-scale evaluation into one confusion matrix over the whole test set.

Protocols (every report states which one produced it):
- `full` (default, honest): the test image is warped to `warp_size`, and the class logits are
  bilinearly upsampled to the label's original resolution before the argmax.
- `original`: as the original CaGNet code: the label is nearest-resized to the warp size and
  then nearest-downsampled to the stride-8 feature grid, where it meets the raw prediction.
The argmax never includes a non-class logit, and background / void (255) is never scored.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Iterable

import torch
import torch.nn.functional as F

from cagnet.metrics import confusion_matrix
from cagnet.utils.distributed import sum_across_processes

PROTOCOL_DESCRIPTIONS = {
    "full": "image warped to {warp}x{warp}; logits bilinearly upsampled to each label's original "
            "resolution",
    "original": "image warped to {warp}x{warp}; labels nearest-resized to {warp}x{warp} then "
                "nearest-downsampled to the stride-8 feature grid (original CaGNet protocol)",
}


def describe_protocol(protocol: str, warp_size: int) -> str:
    return PROTOCOL_DESCRIPTIONS[protocol].format(warp=warp_size)


def _nearest(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()


def predictions_for_labels(logits: torch.Tensor, labels: list[torch.Tensor], protocol: str,
                           warp_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pair each image's prediction with its label under `protocol`.

    Args:
        logits: (B, K, h, w) real-class logits on the feature grid.
        labels: B tensors (H_i, W_i) of test label ids (0..K-1, 255).
    Returns:
        B pairs (prediction, label) of equal shape.
    """
    pairs = []
    for index, label in enumerate(labels):
        label = label.to(logits.device)
        if protocol == "full":
            upsampled = F.interpolate(logits[index:index + 1].float(), size=label.shape[-2:],
                                      mode="bilinear", align_corners=False)
            pairs.append((upsampled[0].argmax(0), label))
        else:
            warped = _nearest(label, (warp_size, warp_size))
            grid_label = _nearest(warped, tuple(logits.shape[-2:]))
            pairs.append((logits[index].argmax(0), grid_label))
    return pairs


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], num_classes: int, protocol: str,
             warp_size: int, device: torch.device,
             autocast: Callable[[], ContextManager] | None = None, max_images: int = 0,
             progress: Callable[[int], None] | None = None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = sum_across_processes
             ) -> torch.Tensor:
    """Accumulate the (K, K) confusion matrix (rows = ground truth) of `model.segment` over
    `loader`: one single-scale forward per batch.

    Under torchrun each rank evaluates its strided share of the test set
    (`cagnet.utils.distributed.shard_loader`) and `reduce` (default: an all-reduce sum, a no-op
    in a single process) adds the shares up; the sum of integer counts is exact, so every rank
    returns the confusion matrix of the whole test set. Pass `reduce=None` to keep a rank's own
    share."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    seen_images = 0
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"]
        labels = list(labels) if isinstance(labels, torch.Tensor) else labels
        if autocast is None:
            logits = model.segment(images)
        else:
            with autocast():
                logits = model.segment(images)
        for prediction, label in predictions_for_labels(logits, labels, protocol, warp_size):
            confusion += confusion_matrix(prediction, label, num_classes)
        seen_images += len(labels)
        if progress is not None:
            progress(len(labels))
        if max_images and seen_images >= max_images:
            break
    return reduce(confusion) if reduce is not None else confusion
