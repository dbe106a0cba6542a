"""Evaluation: single-scale forwards (or test-time augmentation, `eval.tta`) into confusion
matrices over the whole test set, the scores, and their report (`metrics.json`, `report.md`,
`confusion.csv`, `confusion.png`, `iou.png`); `evaluate_checkpoint` is `cagnet eval`.

Every report gives both protocols from one forward pass per batch; `eval.protocol` is the
primary one (the top-level scores, which select models):
- `full` (default, honest): the test image is warped to `warp_size`, and the class logits are
  bilinearly upsampled to the label's original resolution before the argmax.
- `original`: as the original CaGNet code: the label is nearest-resized to the warp size and
  then nearest-downsampled to the stride-8 feature grid, where it meets the raw prediction.
The argmax never includes a non-class logit, and background / void (255) is never scored.
`eval.min_confidence` scores an open-world threshold apart, never in the main scores.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable, ContextManager, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cagnet.config import EvalConfig
from cagnet.datasets.splits import ClassSplit
from cagnet.metrics import confusion_matrix, zero_shot_scores
from cagnet.models.fold import inference_model
from cagnet.report.charts import write_evaluation_figures
from cagnet.report.pictures import class_colours, segmentation_panel
from cagnet.report.tables import write_report
from cagnet.utils.distributed import sum_across_processes
from cagnet.utils.io import atomic_write_json
from cagnet.utils.runtime import RunLog, autocast_factory, resolve_device

PROTOCOLS = ("full", "original")
UPSAMPLE_BUDGET = 1 << 24  # float elements of one upsampled (classes, H, W) group


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int],
                     budget: int = UPSAMPLE_BUDGET, confidence: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Argmax of the logits (K, h, w) bilinearly upsampled (align_corners=False) to size
    (H, W): (H, W) int64, and with `confidence` the max softmax probability (H, W) float32
    (else None). Classes are upsampled a group at a time (about `budget` floats) into a running
    max and a running softmax sum, so no (K, H, W) tensor exists; each class is upsampled
    independently of the others, so the argmax is exactly that of the whole upsampled stack."""
    height, width = size
    group = max(1, budget // max(1, height * width))
    best = logits.new_full(size, -math.inf, dtype=torch.float32)
    index = torch.zeros(size, dtype=torch.long, device=logits.device)
    total = torch.zeros_like(best)
    for start in range(0, logits.shape[0], group):
        upsampled = F.interpolate(logits[None, start:start + group].float(), size=size,
                                  mode="bilinear", align_corners=False)[0]
        value, position = upsampled.max(0)
        top = torch.maximum(best, value)
        if confidence:
            total = total * (best - top).exp() + (upsampled - top).exp().sum(0)
        index = torch.where(value > best, position + start, index)
        best = top
    return index, (1.0 / total if confidence else None)


def segment(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
            flip: bool = False) -> torch.Tensor:
    """Real-class logits (B, K, h, w) of images (B, 3, H, W): one forward, or (test-time
    augmentation) the mean over `scales` (images resized bilinearly to (int(s H), int(s W)))
    and, with `flip`, their horizontal mirrors, each bilinearly resized to the scale-1 grid."""
    if tuple(scales) == (1.0,) and not flip:
        return model.segment(images)
    height, width = images.shape[-2:]
    total = 0.0
    for scale in scales:  # resizing to the same size is exactly the identity
        scaled = F.interpolate(images, size=(int(scale * height), int(scale * width)),
                               mode="bilinear", align_corners=False)
        for mirror in (False, True)[:1 + flip]:
            logits = model.segment(scaled.flip(-1) if mirror else scaled).float()
            total = total + F.interpolate(logits.flip(-1) if mirror else logits, mode="bilinear",
                                          size=model.feature_size(height, width),
                                          align_corners=False)
    return total / (len(scales) * (1 + flip))


def grid_label(label: torch.Tensor, warp_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Protocol `original`: label (H, W) nearest-resized to the warp size, then to the grid."""
    for size in ((warp_size, warp_size), grid):
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
    return label.long()


def predictions_for_labels(logits: torch.Tensor, labels: list[torch.Tensor], protocol: str,
                           warp_size: int, min_confidence: float = 0.0
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """B pairs (prediction, label) of equal shape under `protocol`, from logits (B, K, h, w)
    and B labels (H_i, W_i) of test ids (0..K-1, 255); pixels whose max softmax probability
    is below `min_confidence` predict K (no class)."""
    pairs, threshold = [], min_confidence > 0
    for scores, label in zip(logits, labels):
        label = label.to(logits.device)
        if protocol == "full":
            prediction, probability = upsampled_argmax(scores, tuple(label.shape),
                                                       confidence=threshold)
        else:
            label = grid_label(label, warp_size, tuple(logits.shape[-2:]))
            prediction = scores.argmax(0)
            probability = torch.softmax(scores.float(), 0).amax(0) if threshold else None
        if threshold:
            prediction = torch.where(probability < min_confidence, len(scores), prediction)
        pairs.append((prediction, label))
    return pairs


@torch.no_grad()
def confusion_matrices(model: torch.nn.Module, loader: Iterable[dict], num_classes: int,
                       evaluation: EvalConfig, device: torch.device,
                       autocast: Callable[[], ContextManager] | None = None,
                       progress: Callable[[int], None] | None = None,
                       reduce: Callable[[torch.Tensor], torch.Tensor] | None
                       = sum_across_processes, channels_last: bool = False
                       ) -> dict[str, torch.Tensor]:
    """The (K, K) confusion matrices (rows = ground truth) of `full` and `original` from one
    forward pass per batch (`segment`, with `eval.tta`); with `eval.min_confidence` also
    `min_confidence`, (K + 1, K + 1) on `eval.protocol`, column K = no class.

    Under torchrun each rank evaluates its strided share of the test set
    (`cagnet.utils.distributed.shard_loader`) and `reduce` (default: an all-reduce sum, a no-op
    in a single process) adds the shares up; the sum of integer counts is exact, so every rank
    returns the matrices of the whole test set. Pass `reduce=None` to keep a rank's own share.
    `channels_last`: images in NHWC order, for a model whose weights are."""
    model.eval()
    sizes = {name: num_classes for name in PROTOCOLS}
    if evaluation.min_confidence > 0:
        sizes["min_confidence"] = num_classes + 1
    confusions = {name: torch.zeros(size, size, dtype=torch.long, device=device)
                  for name, size in sizes.items()}
    scales = evaluation.tta_scales if evaluation.tta else (1.0,)
    seen_images = 0
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True, memory_format=torch.channels_last
                                   if channels_last else torch.preserve_format)
        labels = list(batch["label"])
        with (autocast or contextlib.nullcontext)():
            logits = segment(model, images, scales, evaluation.tta and evaluation.tta_flip)
        for name, confusion in confusions.items():  # min_confidence: on eval.protocol
            protocol, threshold = (evaluation.protocol, evaluation.min_confidence) \
                if name == "min_confidence" else (name, 0.0)
            for prediction, label in predictions_for_labels(logits, labels, protocol,
                                                            evaluation.warp_size, threshold):
                confusion += confusion_matrix(prediction, label, len(confusion))
        seen_images += len(labels)
        if progress is not None:
            progress(len(labels))
        if evaluation.max_images and seen_images >= evaluation.max_images:
            break
    return {name: reduce(matrix) if reduce is not None else matrix
            for name, matrix in confusions.items()}


def evaluate(model: torch.nn.Module, loader: Iterable[dict], num_classes: int, protocol: str,
             warp_size: int, device: torch.device,
             autocast: Callable[[], ContextManager] | None = None, max_images: int = 0,
             progress: Callable[[int], None] | None = None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = sum_across_processes
             ) -> torch.Tensor:
    """The (K, K) confusion matrix of `protocol` (see `confusion_matrices`)."""
    evaluation = EvalConfig(protocol=protocol, warp_size=warp_size, max_images=max_images)
    return confusion_matrices(model, loader, num_classes, evaluation, device, autocast,
                              progress, reduce)[protocol]


def evaluate_and_report(model: torch.nn.Module, loader: Iterable[dict], evaluation: EvalConfig,
                        split: ClassSplit, card: dict, device: torch.device,
                        out_dir: Path | None = None, title: str = "",
                        autocast: Callable[[], ContextManager] | None = None,
                        channels_last: bool = False) -> dict:
    """Evaluate `model` on `loader`: the `eval.protocol` scores (`zero_shot_scores`) plus both
    protocols' scores under `protocols`; with `out_dir`, write `metrics.json`, `report.md`
    (with the protocol `card`) and the pictures there, and with `eval.min_confidence` the
    open-world scores (pixels left without a class count as misses; `coverage` = share of
    pixels given a class) into `min_confidence.json` and a block of the report."""
    num_classes, num_seen = len(split.model_ids), split.num_seen
    confusions = {name: matrix.cpu() for name, matrix in confusion_matrices(
        model, loader, num_classes, evaluation, device, autocast,
        channels_last=channels_last).items()}
    seen, unseen = list(range(num_seen)), list(range(num_seen, num_classes))
    protocols = {name: zero_shot_scores(confusions[name], seen, unseen) for name in PROTOCOLS}
    scores = {**protocols[evaluation.protocol], "protocols": protocols}
    if evaluation.tta:
        card = {**card, "test_time_augmentation": (
            f"logits averaged over scales {list(evaluation.tta_scales)}"
            f"{' and their horizontal flips' if evaluation.tta_flip else ''} on the scale-1 "
            "feature grid")}
    open_world = None
    if evaluation.min_confidence > 0:
        matrix = confusions["min_confidence"]
        open_world = {"min_confidence": evaluation.min_confidence,
                      "protocol": evaluation.protocol,
                      "coverage": 1.0 - float(matrix[:, num_classes].sum() / matrix.sum()),
                      **{key: value[:num_classes] if isinstance(value, list) else value
                         for key, value in zero_shot_scores(matrix, seen, unseen).items()}}
    if out_dir is not None:
        write_report(out_dir, scores, split.model_class_names, num_seen, card, title,
                     open_world)
        if open_world is not None:
            atomic_write_json(Path(out_dir) / "min_confidence.json", open_world)
        write_evaluation_figures(out_dir, confusions[evaluation.protocol].numpy(), scores,
                                 split.model_class_names, num_seen)
    return scores


@torch.no_grad()
def evaluation_panel(model: torch.nn.Module, loader: Iterable[dict], mean_bgr: Sequence[float],
                     device: torch.device, class_names: Sequence[str],
                     max_images: int = 4) -> np.ndarray:
    """Input / ground truth / prediction of the first test images, stacked vertically, for
    TensorBoard: (3, H, W) uint8 RGB. Shown at the warp size (the label nearest-resized to it,
    the logits bilinearly upsampled to it); the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    mean = np.asarray(mean_bgr, dtype=np.float32)
    colours = class_colours(len(class_names), class_names)
    try:
        rows = []
        for batch in loader:
            images = batch["image"][:max_images - len(rows)]
            logits = model.segment(images.to(device)).float()
            size = tuple(images.shape[-2:])
            for index in range(len(images)):
                prediction = upsampled_argmax(logits[index], size)[0].cpu().numpy()
                image = (images[index].numpy().transpose(1, 2, 0) + mean).clip(0, 255)
                label = F.interpolate(batch["label"][index][None, None].float(), size=size,
                                      mode="nearest")[0, 0].long().numpy()
                rows.append(segmentation_panel(image.astype(np.uint8), label, prediction,
                                               colours))
            if len(rows) >= max_images:
                break
    finally:
        model.train(was_training)
    return np.concatenate(rows, axis=1)


def log_evaluation_panel(log: RunLog, iteration: int, model: torch.nn.Module,
                         loader: Iterable[dict], mean_bgr: Sequence[float],
                         device: torch.device, class_names: Sequence[str]) -> None:
    """Add `evaluation_panel` to TensorBoard as `val/predictions` (only where `log` writes
    TensorBoard: the main process)."""
    if log.enabled and log.writer is not None:
        log.add_image("val/predictions", evaluation_panel(model, loader, mean_bgr, device,
                                                        class_names),
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
    model = inference_model(loaded.model, config.eval.channels_last, device)
    scores = evaluate_and_report(model, build_eval_loader(config, split), config.eval, split,
                                 card, device, target, title,
                                 autocast_factory(device, config.train.amp),
                                 config.eval.channels_last)
    return scores, target
