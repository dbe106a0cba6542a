"""Training SPNet (`baseline.method: spnet`) with CaGNet's data pipeline, optimiser groups,
poly schedule, checkpoints, evaluator and report.

Each iteration: the backbone runs at every `model.train_scales` scale (plus the max map), the
features are projected onto the SEEN class embeddings and the cross-entropy is summed over the
maps (`spnet_loss`); SGD with the backbone groups of method.md §3.3 and poly decay. The batch,
augmentation and dropout of iteration t are functions of (seed, t) (`loop.py`), so `resume`
continues exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cagnet.baselines.loop import run_iterations
from cagnet.baselines.methods import build_spnet, spnet_optimizer
from cagnet.baselines.spnet import SPNet, spnet_loss
from cagnet.builders import (Benchmark, build_benchmark, build_datasets, load_backbone_init,
                             resolve_device)
from cagnet.config import Config, config_to_dict, save_config
from cagnet.engine.checkpoint import (keep_previous, load_model_state, newest_valid_checkpoint,
                                      save_checkpoint)
from cagnet.engine.protocol import write_protocol_card
from cagnet.engine.run_dir import open_run_log, prepare_run_dir
from cagnet.engine.schedules import poly_lr
from cagnet.engine.trainer import TrainResult
from cagnet.engine.validation import evaluate_and_report
from cagnet.errors import ConfigError, TrainingError
from cagnet.utils.runtime import apply_run_settings, autocast_factory, build_grad_scaler

LOGGER = logging.getLogger("cagnet")


def train_spnet(config: Config, run_dir: str | Path, *, resume: bool = False,
                overwrite: bool = False, show_progress: bool = True) -> TrainResult:
    """Train SPNet into `run_dir` (config.yaml, protocol.json, log.jsonl, checkpoints/last.pt)
    and evaluate it (metrics.json, report.md); `resume` continues from the newest checkpoint."""
    if config.baseline.method != "spnet":
        raise ConfigError(f"baseline.method: train_spnet needs 'spnet', got "
                          f"{config.baseline.method!r}")
    run_dir = Path(run_dir)
    device = resolve_device(config.train.device)
    prepare_run_dir(run_dir, resume, overwrite)
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    benchmark = build_benchmark(config)
    model = build_spnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    model.to(device)
    optimizer = spnet_optimizer(model, config.optim)
    start = _initialise(model, optimizer, config, run_dir, resume)
    save_config(config, run_dir / "config.yaml")
    write_protocol_card(run_dir, config, benchmark)
    dataset = build_datasets(config.data, benchmark.split, config.train.seed, train=True)
    log = open_run_log(run_dir, start + 1 if start else None)
    train = config.train
    step = _spnet_step(model, optimizer, config, device)

    def save(done: int) -> Path:
        path = run_dir / "checkpoints" / "last.pt"
        keep_previous(path)
        return save_checkpoint(path, model=model, iteration=done, config=config_to_dict(config),
                               class_names=benchmark.split.model_class_names,
                               num_seen=benchmark.split.num_seen,
                               optimizers={"backbone": optimizer.state_dict()})

    def after_iteration(done: int) -> None:
        if done % train.checkpoint_interval == 0 and done != train.iterations:
            save(done)

    try:
        run_iterations(step, dataset, total=train.iterations, batch_size=train.batch_size,
                       seed=train.seed, num_workers=config.data.num_workers, log=log,
                       log_interval=train.log_interval, start_iteration=start,
                       after_iteration=after_iteration, show_progress=show_progress)
        checkpoint = save(train.iterations)
        scores = _evaluate(model, config, benchmark, device, run_dir)
        log.write("val", train.iterations,
                  {key: value for key, value in scores.items() if isinstance(value, float)})
    finally:
        log.close()
    return TrainResult(run_dir, checkpoint, scores)


def _initialise(model: SPNet, optimizer: torch.optim.Optimizer, config: Config, run_dir: Path,
                resume: bool) -> int:
    """Load the newest checkpoint (resume) or the backbone init; returns the start iteration."""
    found = newest_valid_checkpoint(run_dir) if resume else None
    if found is not None:
        path, state = found
        load_model_state(model, state, path)
        optimizer.load_state_dict(state["optimizers"]["backbone"])
        LOGGER.info("resuming %s at iteration %d", path, state["iteration"])
        return int(state["iteration"])
    if config.model.init:
        missing = load_backbone_init(model, config.model.init)
        LOGGER.info("SPNet backbone initialised from %s (%d keys kept their init)",
                    config.model.init, len(missing))
    return 0


def _spnet_step(model: SPNet, optimizer: torch.optim.Optimizer, config: Config,
                device: torch.device):
    """The update of one iteration as a function of (iteration, batch)."""
    optim, train = config.optim, config.train
    autocast = autocast_factory(device, train.amp)
    scaler = build_grad_scaler(device, train.amp)

    def step(iteration: int, batch: dict) -> dict[str, float]:
        rate = poly_lr(optim.backbone_lr, iteration, train.iterations, optim.poly_power,
                       optim.poly_refresh)
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_mult"]
        model.train()
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast():
            features = model.multi_scale_features(images)
        loss = spnet_loss(model, [feature.float() for feature in features], labels)
        value = float(loss.detach())
        if value != value or abs(value) == float("inf"):
            raise TrainingError(f"SPNet iteration {iteration}: non-finite loss {value}; lower "
                                "optim.backbone_lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return {"cls_seen": value, "lr_backbone": rate}

    return step


def _evaluate(model: SPNet, config: Config, benchmark: Benchmark, device: torch.device,
              run_dir: Path) -> dict:
    title = f"{config.name}: SPNet after {config.train.iterations} iterations"
    return evaluate_and_report(model, config, benchmark, device, run_dir, title)
