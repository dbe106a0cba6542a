"""Evaluation into confusion matrices of both protocols (`full`: at each label's resolution;
`original`: on the feature grid, as the original code), scores and reports; and `cagnet eval`."""

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
Autocast = Callable[[], ContextManager]  # a factory of the forward's autocast context
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums the ranks' confusion matrices


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int], budget: int = UPSAMPLE_BUDGET,
                     confidence: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Argmax (H, W) of logits (K, h, w) bilinearly upsampled to `size` (and with `confidence`
    the max softmax probability), a group of classes at a time: no (K, H, W) tensor."""
    group = max(1, budget // max(1, size[0] * size[1]))
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
    """Real-class logits (B, K, h, w) of images (B, 3, H, W), test-time augmented."""
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


def predictions_for_labels(logits: torch.Tensor, labels: list[torch.Tensor], protocol: str,
                           warp_size: int, min_confidence: float = 0.0
                           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """B (prediction, label) pairs under `protocol`; unconfident pixels predict K (no class)."""
    pairs, threshold = [], min_confidence > 0
    for scores, label in zip(logits, labels):
        label = label.to(logits.device)
        if protocol == "full":
            prediction, probability = upsampled_argmax(scores, tuple(label.shape),
                                                       confidence=threshold)
        else:
            for size in ((warp_size, warp_size), tuple(logits.shape[-2:])):  # as the original
                label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
            label = label.long()
            prediction = scores.argmax(0)
            probability = torch.softmax(scores.float(), 0).amax(0) if threshold else None
        if threshold:
            prediction = torch.where(probability < min_confidence, len(scores), prediction)
        pairs.append((prediction, label))
    return pairs


@torch.no_grad()
def confusion_matrices(model: torch.nn.Module, loader: Iterable[dict], num_classes: int,
                       evaluation: EvalConfig, device: torch.device,
                       autocast: Autocast | None = None,
                       reduce: Reduce | None = sum_across_processes,
                       channels_last: bool = False, num_seen: int = 0) -> dict[str, torch.Tensor]:
    """The (K, K) confusion matrices of both protocols (and with `eval.min_confidence` a
    (K + 1, K + 1) one, K = no class), summed over ranks by `reduce` (None: this rank's share).
    With 0 < `num_seen` < K also `unseen_only` (`eval.protocol`): the pixels of unseen classes
    only, each predicted among the unseen classes only (ZS3Net's ZSL setting)."""
    model.eval()
    sizes = {name: num_classes for name in PROTOCOLS}
    if evaluation.min_confidence > 0:
        sizes["min_confidence"] = num_classes + 1
    if 0 < num_seen < num_classes:
        sizes["unseen_only"] = num_classes
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
            scores, targets, offset = logits, labels, 0
            if name == "unseen_only":  # only the unseen channels, on unseen pixels only
                protocol, scores, offset = evaluation.protocol, logits[:, num_seen:], num_seen
                targets = [torch.where(label < num_seen, 255, label) for label in labels]
            for prediction, label in predictions_for_labels(scores, targets, protocol,
                                                            evaluation.warp_size, threshold):
                confusion += confusion_matrix(prediction + offset, label, len(confusion))
        seen_images += len(labels)
        if evaluation.max_images and seen_images >= evaluation.max_images:
            break
    return {name: reduce(matrix) if reduce is not None else matrix
            for name, matrix in confusions.items()}


def evaluate(model: torch.nn.Module, loader: Iterable[dict], num_classes: int, protocol: str,
             warp_size: int, device: torch.device, autocast: Autocast | None = None,
             max_images: int = 0, reduce: Reduce | None = sum_across_processes) -> torch.Tensor:
    """The (K, K) confusion matrix of `protocol` (see `confusion_matrices`)."""
    evaluation = EvalConfig(protocol=protocol, warp_size=warp_size, max_images=max_images)
    return confusion_matrices(model, loader, num_classes, evaluation, device, autocast,
                              reduce)[protocol]


def evaluate_and_report(model: torch.nn.Module, loader: Iterable[dict], evaluation: EvalConfig,
                        split: ClassSplit, card: dict, device: torch.device,
                        out_dir: Path | None = None, title: str = "",
                        autocast: Autocast | None = None, channels_last: bool = False) -> dict:
    """The `eval.protocol` scores plus both protocols' (`protocols`); reports into `out_dir`."""
    num_classes, num_seen = len(split.model_ids), split.num_seen
    confusions = {name: matrix.cpu() for name, matrix in confusion_matrices(
        model, loader, num_classes, evaluation, device, autocast,
        channels_last=channels_last, num_seen=num_seen).items()}
    seen, unseen = list(range(num_seen)), list(range(num_seen, num_classes))
    protocols = {name: zero_shot_scores(confusions[name], seen, unseen) for name in PROTOCOLS}
    scores = {**protocols[evaluation.protocol], "protocols": protocols}
    if "unseen_only" in confusions:
        among_unseen = zero_shot_scores(confusions["unseen_only"], [], unseen)
        scores.update(zsl_miou=among_unseen["miou_unseen"], zsl_mean_acc=among_unseen["mean_acc"],
                      zsl_iou=among_unseen["iou"][num_seen:])
    if evaluation.tta:
        flips = " and their horizontal flips" if evaluation.tta_flip else ""
        card = {**card, "test_time_augmentation": f"logits averaged over scales "
                f"{list(evaluation.tta_scales)}{flips} on the scale-1 feature grid"}
    open_world = None
    if evaluation.min_confidence > 0:
        matrix = confusions["min_confidence"]
        open_world = {"min_confidence": evaluation.min_confidence,
                      "protocol": evaluation.protocol,
                      "coverage": 1.0 - float(matrix[:, num_classes].sum() / matrix.sum()),
                      **{key: value[:num_classes] if isinstance(value, list) else value
                         for key, value in zero_shot_scores(matrix, seen, unseen).items()}}
    if out_dir is not None:
        write_report(out_dir, scores, split.model_class_names, num_seen, card, title, open_world)
        if open_world is not None:
            atomic_write_json(Path(out_dir) / "min_confidence.json", open_world)
        write_evaluation_figures(out_dir, confusions[evaluation.protocol].numpy(), scores,
                                 split.model_class_names, num_seen)
    return scores


@torch.no_grad()
def evaluation_panel(model: torch.nn.Module, loader: Iterable[dict], mean_bgr: Sequence[float],
                     device: torch.device, class_names: Sequence[str],
                     max_images: int = 4) -> np.ndarray:
    """Input / ground truth / prediction of the first images for TensorBoard: (3, H, W) uint8."""
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
                rows.append(segmentation_panel(image.astype(np.uint8), label, prediction, colours))
            if len(rows) >= max_images:
                break
    finally:
        model.train(was_training)
    return np.concatenate(rows, axis=1)


def log_evaluation_panel(log: RunLog, iteration: int, model: torch.nn.Module,
                         loader: Iterable[dict], mean_bgr: Sequence[float],
                         device: torch.device, class_names: Sequence[str]) -> None:
    """Add `evaluation_panel` to TensorBoard as `val/predictions` (where `log` writes it)."""
    if log.enabled and log.writer is not None:
        panel = evaluation_panel(model, loader, mean_bgr, device, class_names)
        log.add_image("val/predictions", panel, iteration)


def evaluate_checkpoint(checkpoint: str | Path, config_path: str | None = None,
                        overrides: Sequence[str] = (), out_dir: str | Path | None = None
                        ) -> tuple[dict, Path]:
    """`cagnet eval` of a checkpoint of any method; returns the scores and the report folder."""
    from cagnet.datasets.build import build_eval_loader
    from cagnet.engine.checkpoint import load_model
    from cagnet.engine.protocol import protocol_card
    checkpoint = Path(checkpoint)
    loaded = load_model(checkpoint, config_path, overrides)
    config, split = loaded.config, loaded.split()
    device = resolve_device(config.train.device)
    target = Path(out_dir) if out_dir else checkpoint.parent.parent / f"eval_{checkpoint.stem}"
    title = (f"{config.name}: evaluation of {checkpoint.name} "
             f"(iteration {loaded.state['iteration']})")
    card = protocol_card(config, split, loaded.model.class_embeddings.shape[1])
    model = inference_model(loaded.model, config.eval.channels_last, device)
    scores = evaluate_and_report(model, build_eval_loader(config, split), config.eval, split, card,
                                 device, target, title, autocast_factory(device, config.train.amp),
                                 config.eval.channels_last)
    return scores, target
