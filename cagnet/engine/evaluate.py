"""Evaluation: single-scale forwards into one confusion matrix over the whole test set, the
scores, and their report (`metrics.json`, `report.md`, `confusion.csv`, `confusion.png`,
`iou.png`); `evaluate_checkpoint` is `cagnet eval`.

Protocols (every report states which one produced it):
- `full` (default, honest): the test image is warped to `warp_size`, and the class logits are
  bilinearly upsampled to the label's original resolution before the argmax.
- `original`: as the original CaGNet code: the label is nearest-resized to the warp size and
  then nearest-downsampled to the stride-8 feature grid, where it meets the raw prediction.
The argmax never includes a non-class logit, and background / void (255) is never scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, ContextManager, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cagnet.config import EvalConfig
from cagnet.datasets.splits import ClassSplit
from cagnet.metrics import confusion_matrix, zero_shot_scores
from cagnet.report.charts import write_evaluation_figures
from cagnet.report.pictures import segmentation_panel
from cagnet.report.tables import write_report
from cagnet.utils.distributed import sum_across_processes
from cagnet.utils.runtime import RunLog, autocast_factory, resolve_device


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


def evaluate_and_report(model: torch.nn.Module, loader: Iterable[dict], evaluation: EvalConfig,
                        split: ClassSplit, card: dict, device: torch.device,
                        out_dir: Path | None = None, title: str = "",
                        autocast: Callable[[], ContextManager] | None = None) -> dict:
    """Evaluate `model` on `loader` (scores of `zero_shot_scores`); with `out_dir`, write
    `metrics.json` and `report.md` (with the protocol `card`) and the pictures there."""
    confusion = evaluate(model, loader, len(split.model_ids), evaluation.protocol,
                         evaluation.warp_size, device, autocast, evaluation.max_images).cpu()
    scores = zero_shot_scores(confusion, list(range(split.num_seen)),
                              list(range(split.num_seen, len(split.model_ids))))
    if out_dir is not None:
        write_report(out_dir, scores, split.model_class_names, split.num_seen, card, title)
        write_evaluation_figures(out_dir, confusion.numpy(), scores, split.model_class_names,
                                 split.num_seen)
    return scores


@torch.no_grad()
def evaluation_panel(model: torch.nn.Module, loader: Iterable[dict], mean_bgr: Sequence[float],
                     device: torch.device, max_images: int = 4) -> np.ndarray:
    """Input / ground truth / prediction of the first test images, stacked vertically, for
    TensorBoard: (3, H, W) uint8 RGB. Shown at the warp size (the label nearest-resized to it,
    the logits bilinearly upsampled to it); the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    mean = np.asarray(mean_bgr, dtype=np.float32)
    try:
        rows = []
        for batch in loader:
            images = batch["image"][:max_images - len(rows)]
            logits = model.segment(images.to(device)).float()
            size = tuple(images.shape[-2:])
            predictions = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            for index, prediction in enumerate(predictions.argmax(1).cpu().numpy()):
                image = (images[index].numpy().transpose(1, 2, 0) + mean).clip(0, 255)
                label = F.interpolate(batch["label"][index][None, None].float(), size=size,
                                      mode="nearest")[0, 0].long().numpy()
                rows.append(segmentation_panel(image.astype(np.uint8), label, prediction,
                                               logits.shape[1]))
            if len(rows) >= max_images:
                break
    finally:
        model.train(was_training)
    return np.concatenate(rows, axis=1)


def log_evaluation_panel(log: RunLog, iteration: int, model: torch.nn.Module,
                         loader: Iterable[dict], mean_bgr: Sequence[float],
                         device: torch.device) -> None:
    """Add `evaluation_panel` to TensorBoard as `val/predictions` (only where `log` writes
    TensorBoard: the main process)."""
    if log.enabled and log.writer is not None:
        log.add_image("val/predictions", evaluation_panel(model, loader, mean_bgr, device),
                      iteration)


def evaluate_checkpoint(checkpoint: str | Path, config_path: str | None = None,
                        overrides: Sequence[str] = (), out_dir: str | Path | None = None
                        ) -> tuple[dict, Path]:
    """`cagnet eval`: evaluate `checkpoint` of any method (CaGNet, ZS3Net, SPNet) on its test
    split. The model comes from the checkpoint alone; `config_path` / `overrides` may change
    the data and evaluation settings (`--set eval.protocol=original`). Returns the scores and
    the report folder."""
    from cagnet.datasets.build import build_eval_loader, build_split
    from cagnet.engine.checkpoint import check_same_classes, load_model
    from cagnet.engine.protocol import protocol_card

    checkpoint = Path(checkpoint)
    loaded = load_model(checkpoint, config_path, overrides)
    config = loaded.config
    split = build_split(config)
    check_same_classes(loaded.state, split.model_class_names, checkpoint)
    device = resolve_device(config.train.device)
    target = Path(out_dir) if out_dir else checkpoint.parent.parent / f"eval_{checkpoint.stem}"
    title = (f"{config.name}: evaluation of {checkpoint.name} "
             f"(iteration {loaded.state['iteration']})")
    card = protocol_card(config, split, loaded.model.class_embeddings.shape[1])
    scores = evaluate_and_report(loaded.model.to(device), build_eval_loader(config, split),
                                 config.eval, split, card, device, target, title,
                                 autocast_factory(device, config.train.amp))
    return scores, target
