"""SPNet (`baseline.method: spnet`, `cagnet/models/spnet.py`) as a method of the one loop, with
CaGNet's data pipeline, backbone optimiser groups (method.md §3.3, no contextual group), poly
schedule and evaluator; and `BaselineTraining`, the part SPNet and ZS3Net share. A non-finite
loss skips the update and follows `train.on_nonfinite`.
"""

from pathlib import Path
from typing import Sequence

import torch

from cagnet import losses
from cagnet.config import Config
from cagnet.datasets.build import Benchmark, build_benchmark, build_eval_loader, with_absolute_paths
from cagnet.engine import loop
from cagnet.engine.checkpoint import load_backbone_init
from cagnet.engine.execution import Execution
from cagnet.engine.optim import backbone_optimizer
from cagnet.engine.schedules import poly_lr
from cagnet.engine.trainer import BenchmarkTraining
from cagnet.errors import ConfigError
from cagnet.models.build import build_spnet
from cagnet.models.spnet import SPNet
from cagnet.utils.runtime import RunLog, apply_run_settings, resolve_device


def spnet_loss(model: SPNet, features: Sequence[torch.Tensor],
               labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the seen classes, SUMMED over the multi-scale maps (SPNet's
    objective; CaGNet averages). features: (B, E, h_s, w_s) maps; labels (B, H, W) with
    0..S-1 or 255 (nearest-resized to each map). An unseen-class label raises."""
    terms = [losses.classification_loss(
        model.seen_logits(feature), losses.resize_labels(labels, feature.shape[-2:]))
        for feature in features]
    return torch.stack(terms).sum()


def start_baseline(config: Config, method: str) -> tuple[Config, torch.device, Benchmark]:
    """Check `baseline.method`; returns the config with absolute paths, the device and the
    benchmark, after applying the run settings (threads, seed, determinism)."""
    if config.baseline.method != method:
        raise ConfigError(f"baseline.method: train_{method} needs '{method}', got "
                          f"{config.baseline.method!r}")
    config = with_absolute_paths(config)
    device = resolve_device(config.train.device)
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    return config, device, build_benchmark(config)


class BaselineTraining(BenchmarkTraining):
    """SPNet's and ZS3Net's common part: training data, run files and the final evaluation
    (titled `report_title`, formatted with `iterations`)."""

    report_title = ""

    def evaluate(self, report_dir: Path | None, log: RunLog) -> dict:
        config = self.settings
        title = self.report_title.format(iterations=config.train.iterations)
        return self._evaluate(report_dir, f"{config.name}: {title}",
                              build_eval_loader(config, self.benchmark.split))


class SPNetTraining(BaselineTraining):
    """SPNet's backbone trained on the seen classes (see the module docstring)."""

    name, report_title = "spnet", "SPNet after {iterations} iterations"

    def __init__(self, config: Config, benchmark: Benchmark, model: SPNet,
                 execution: Execution) -> None:
        super().__init__(config, benchmark, model, execution)
        self.optimizers = {"backbone": backbone_optimizer(model.backbone, None, config.optim)}

    def initialise(self) -> None:
        if self.settings.model.init:
            load_backbone_init(self.model, self.settings.model.init)

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
        execution.scaler.scale(loss).backward()
        execution.scaler.step(optimizer)
        execution.scaler.update()
        return {"cls_seen": value, "skipped": 0.0}


def train_spnet(config: Config, run_dir: str | Path, *, resume: bool = False,
                overwrite: bool = False, show_progress: bool = True) -> loop.TrainResult:
    """Train SPNet into `run_dir` (config.yaml, protocol.json, log.jsonl, checkpoints/) and
    evaluate it (metrics.json, report.md); `resume` continues from the newest checkpoint."""
    config, device, benchmark = start_baseline(config, "spnet")
    model = build_spnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                        config.data.mean_bgr)
    execution = Execution.single(device, config.train.batch_size, config.train.amp)
    method = SPNetTraining(config, benchmark, model.to(device), execution)
    return loop.run(method, loop.LoopSettings.from_train(config.train), run_dir,
                    execution=execution, resume=resume, overwrite=overwrite,
                    show_progress=show_progress)
