"""Evaluate a model on the configured test split and write its report with a protocol card
(`metrics.json`, `report.md`) and its pictures (`confusion.csv`, `confusion.png`, `iou.png`);
`evaluation_panel` draws the input / ground truth / prediction panel for TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cagnet.builders import Benchmark, build_datasets
from cagnet.report.charts import write_evaluation_figures
from cagnet.config import Config
from cagnet.datasets.segmentation import collate_samples
from cagnet.engine.evaluate import evaluate
from cagnet.metrics import zero_shot_scores
from cagnet.report.tables import write_report
from cagnet.utils.runtime import autocast_factory
from cagnet.report.pictures import segmentation_panel


def protocol_card(config: Config, benchmark: Benchmark) -> dict:
    """What a reader needs to compare this number with another one (cagnet/engine/protocol.py:
    setting, background, unseen training pixels, evaluation resolution, embeddings + sha256,
    split)."""
    from cagnet.engine.protocol import protocol_card as build_card

    return build_card(config, benchmark)


def build_eval_loader(config: Config, benchmark: Benchmark) -> DataLoader:
    dataset = build_datasets(config.data, benchmark.split, config.train.seed, train=False,
                             eval_warp=config.eval.warp_size)
    return DataLoader(dataset, batch_size=config.eval.batch_size, shuffle=False,
                      num_workers=config.data.num_workers, collate_fn=collate_samples)


def evaluate_and_report(model: torch.nn.Module, config: Config, benchmark: Benchmark,
                        device: torch.device, out_dir: Path | None, title: str,
                        loader: DataLoader | None = None) -> dict:
    """Evaluate `model`; write `metrics.json` and `report.md` into `out_dir` when given."""
    loader = loader or build_eval_loader(config, benchmark)
    split = benchmark.split
    confusion = evaluate(model, loader, len(split.model_ids), config.eval.protocol,
                         config.eval.warp_size, device,
                         autocast_factory(device, config.train.amp), config.eval.max_images)
    seen = list(range(split.num_seen))
    unseen = list(range(split.num_seen, split.num_seen + split.num_unseen))
    scores = zero_shot_scores(confusion.cpu(), seen, unseen)
    if out_dir is not None:
        write_report(out_dir, scores, split.model_class_names, split.num_seen,
                     protocol_card(config, benchmark), title)
        write_evaluation_figures(out_dir, confusion.cpu().numpy(), scores,
                                 split.model_class_names, split.num_seen)
    return scores


@torch.no_grad()
def evaluation_panel(model: torch.nn.Module, config: Config, benchmark: Benchmark,
                     device: torch.device, loader: DataLoader | None = None,
                     max_images: int = 4) -> np.ndarray:
    """Input / ground truth / prediction of the first test images, stacked vertically, for
    TensorBoard: (3, H, W) uint8 RGB. Shown at the warp size (the label nearest-resized to it,
    the logits bilinearly upsampled to it); the model's train/eval mode is restored."""
    loader = loader or build_eval_loader(config, benchmark)
    was_training = model.training
    model.eval()
    mean = np.asarray(config.data.mean_bgr, dtype=np.float32)
    num_classes = benchmark.split.num_seen + benchmark.split.num_unseen
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
                                               num_classes))
            if len(rows) >= max_images:
                break
    finally:
        model.train(was_training)
    return np.concatenate(rows, axis=1)


def log_evaluation_panel(log, iteration: int, model: torch.nn.Module, config: Config,
                         benchmark: Benchmark, device: torch.device,
                         loader: DataLoader | None = None) -> None:
    """Add `evaluation_panel` to TensorBoard as `val/predictions` (only where `log`, a
    `RunLog`, writes TensorBoard: the main process)."""
    if getattr(log, "enabled", False) and getattr(log, "writer", None) is not None:
        log.add_image("val/predictions", evaluation_panel(model, config, benchmark, device,
                                                          loader), iteration)
