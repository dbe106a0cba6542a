"""Training SPNet (`baseline.method: spnet`, `cagnet/models/spnet.py`) as a method of the one
loop, with CaGNet's data pipeline, optimiser groups, poly schedule, evaluator and report.

Each iteration: the backbone runs at every `model.train_scales` scale (plus the max map), the
features are projected onto the SEEN class embeddings and the cross-entropy is summed over the
maps (`spnet_loss`); SGD with the backbone groups of method.md §3.3 (no contextual group) and
poly decay. A non-finite loss skips the update and follows `train.on_nonfinite`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cagnet import losses
from cagnet.config import Config, config_to_dict, save_config
from cagnet.datasets.build import (Benchmark, build_benchmark, build_dataset, build_eval_loader,
                                   with_absolute_paths)
from cagnet.engine import loop
from cagnet.engine.checkpoint import load_backbone_init
from cagnet.engine.evaluate import evaluate_and_report
from cagnet.engine.execution import Execution
from cagnet.engine.optim import backbone_optimizer
from cagnet.engine.protocol import protocol_card
from cagnet.engine.schedules import poly_lr
from cagnet.errors import ConfigError
from cagnet.models.build import build_spnet
from cagnet.models.spnet import SPNet
from cagnet.utils.io import atomic_write_json
from cagnet.utils.runtime import RunLog, apply_run_settings, resolve_device


def spnet_loss(model: SPNet, features: Sequence[torch.Tensor],
               labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the seen classes, SUMMED over the multi-scale maps (SPNet's
    objective; CaGNet averages). features: (B, E, h_s, w_s) maps; labels (B, H, W) with
    0..S-1 or 255 (nearest-resized to each map). An unseen-class label would be out of range
    for the S seen logits and raises."""
    terms = [losses.classification_loss(
        model.seen_logits(feature), losses.resize_labels(labels, feature.shape[-2:]))
        for feature in features]
    return torch.stack(terms).sum()


class SPNetTraining(loop.Method):
    """SPNet's backbone trained on the seen classes (see the module docstring)."""

    name = "spnet"

    def __init__(self, config: Config, benchmark: Benchmark, model: SPNet,
                 execution: Execution) -> None:
        self.settings, self.benchmark, self.model = config, benchmark, model
        self.execution = execution
        self.config = config_to_dict(config)
        self.class_names = benchmark.split.model_class_names
        self.num_seen = benchmark.split.num_seen
        self.optimizers = {"backbone": backbone_optimizer(model.backbone, None, config.optim)}
        self.dataset = build_dataset(config.data, benchmark.split, config.train.seed)
        self.num_workers = config.data.num_workers

    def initialise(self) -> None:
        if self.settings.model.init:
            load_backbone_init(self.model, self.settings.model.init)

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.settings, run_dir / "config.yaml")
        atomic_write_json(run_dir / "protocol.json", protocol_card(
            self.settings, self.benchmark.split, self.benchmark.embedding_dim))

    def set_learning_rates(self, iteration: int) -> dict[str, float]:
        optim, train = self.settings.optim, self.settings.train
        rate = poly_lr(optim.backbone_lr, iteration, train.iterations, optim.poly_power,
                       optim.poly_refresh)
        for group in self.optimizers["backbone"].param_groups:
            group["lr"] = rate * group["lr_mult"]
        return {"backbone": rate}

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        execution, optimizer = self.execution, self.optimizers["backbone"]
        self.model.train()
        images = batch["image"].to(execution.device, non_blocking=True)
        labels = batch["label"].to(execution.device, non_blocking=True)
        with execution.autocast():
            features = self.model.multi_scale_features(images)
        loss = spnet_loss(self.model, [feature.float() for feature in features], labels)
        value = float(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return {"cls_seen": value, "skipped": 1.0}
        scaler = execution.scaler
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return {"cls_seen": value, "skipped": 0.0}

    def evaluate(self, report_dir: Path | None, log: RunLog) -> dict:
        config, split = self.settings, self.benchmark.split
        card = protocol_card(config, split, self.benchmark.embedding_dim)
        return evaluate_and_report(self.model, build_eval_loader(config, split), config.eval,
                                   split, card, self.execution.device, report_dir,
                                   f"{config.name}: SPNet after {config.train.iterations} "
                                   "iterations", self.execution.autocast)


def train_spnet(config: Config, run_dir: str | Path, *, resume: bool = False,
                overwrite: bool = False, show_progress: bool = True) -> loop.TrainResult:
    """Train SPNet into `run_dir` (config.yaml, protocol.json, log.jsonl, checkpoints/) and
    evaluate it (metrics.json, report.md); `resume` continues from the newest checkpoint."""
    if config.baseline.method != "spnet":
        raise ConfigError(f"baseline.method: train_spnet needs 'spnet', got "
                          f"{config.baseline.method!r}")
    config = with_absolute_paths(config)
    device = resolve_device(config.train.device)
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    benchmark = build_benchmark(config)
    model = build_spnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                        config.data.mean_bgr)
    execution = Execution.single(device, config.train.batch_size, config.train.amp)
    method = SPNetTraining(config, benchmark, model.to(device), execution)
    return loop.run(method, loop.LoopSettings.from_train(config.train), run_dir,
                    execution=execution, resume=resume, overwrite=overwrite,
                    show_progress=show_progress)
