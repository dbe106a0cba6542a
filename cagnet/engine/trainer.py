"""The training loop: step 1 (`train.stage: step1`) or the mixed finetune schedule
(`train.stage: finetune`), iteration-based, resumable, with logging, checkpoints and evaluation.

Everything random in iteration t is seeded from (seed, t) and every schedule is a function of
t, so a run resumed from a checkpoint at iteration t continues exactly as if never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cagnet.builders import (build_benchmark, build_datasets, build_model, load_backbone_init,
                             resolve_device)
from cagnet.config import Config, config_to_dict, save_config
from cagnet.datasets.segmentation import IterationBatchSampler, collate_samples
from cagnet.engine.checkpoint import load_checkpoint, newest_valid_checkpoint, save_checkpoint
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.schedules import is_step2_iteration, iteration_seed
from cagnet.engine.steps import classifier_step, feature_generation_step
from cagnet.engine.validation import build_eval_loader, evaluate_and_report
from cagnet.errors import CagnetError, CheckpointError, TrainingError
from cagnet.report import format_scores_line
from cagnet.utils.runtime import RunLog, autocast_factory, seed_everything, set_deterministic

LOGGER = logging.getLogger("cagnet")


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    scores: dict | None


def step1_iterations_before(iteration: int, stage: str, period: int) -> int:
    """How many step-1 iterations (each consuming one batch) come before `iteration`."""
    if stage != "finetune":
        return iteration
    full_cycles, remainder = divmod(iteration, 2 * period)
    return full_cycles * period + min(remainder, period)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run; check that the folder is writable."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()) and not (resume or overwrite):
        raise CagnetError(f"run directory {run_dir} already holds checkpoints: pass --resume to "
                          "continue it or --overwrite to start again")
    checkpoints.mkdir(parents=True, exist_ok=True)
    probe = run_dir / ".write-test"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise CagnetError(f"run directory {run_dir} is not writable: {error}") from None
    if overwrite and not resume:
        for stale in ("log.jsonl", "metrics.json", "report.md"):
            (run_dir / stale).unlink(missing_ok=True)


def train(config: Config, run_dir: str | Path, *, resume: bool = False,
          init_checkpoint: str | Path | None = None, overwrite: bool = False,
          show_progress: bool = True) -> TrainResult:
    """Run `config.train.stage` into `run_dir` and evaluate the final model.

    Args:
        config: the resolved config.
        run_dir: output folder (config.yaml, log.jsonl, tensorboard/, checkpoints/, metrics.json).
        resume: continue from the newest valid checkpoint in `run_dir`.
        init_checkpoint: a cagnet checkpoint whose model weights start this run (the step-1
            model for `finetune`).
        overwrite: allow starting over in a folder that already holds checkpoints.
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, overwrite)
    device = resolve_device(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    set_deterministic(config.train.deterministic)
    save_config(config, run_dir / "config.yaml")
    benchmark = build_benchmark(config)
    split = benchmark.split
    model = build_model(config.model, benchmark.class_embeddings, split.num_seen)
    train_backbone = config.train.stage == "step1"

    start = 0
    resumed = newest_valid_checkpoint(run_dir) if resume else None
    if resumed is not None:
        path, state = resumed
        model.load_state_dict(state["model"])
        start = state["iteration"]
        LOGGER.info("resuming %s at iteration %d", path, start)
    elif init_checkpoint is not None:
        state = load_checkpoint(init_checkpoint)
        _check_same_classes(state, split.model_class_names, init_checkpoint)
        model.load_state_dict(state["model"])
        LOGGER.info("model initialised from %s (iteration %d)", init_checkpoint,
                    state["iteration"])
    elif config.model.init:
        missing = load_backbone_init(model, config.model.init)
        LOGGER.info("backbone initialised from %s (%d keys kept their init)", config.model.init,
                    len(missing))
    model.to(device)
    optimizers = build_optimizers(model, config.optim, train_backbone)
    if resumed is not None:
        optimizers.load_state_dict(resumed[1]["optimizers"])

    autocast = autocast_factory(device, config.train.amp)
    sampler = IterationBatchSampler(
        0, config.train.batch_size, config.train.seed,
        step1_iterations_before(start, config.train.stage, config.train.mixed_period))
    dataset = build_datasets(config.data, split, config.train.seed, train=True)
    sampler.dataset_size = len(dataset)
    loader = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples,
                             num_workers=config.data.num_workers,
                             persistent_workers=config.data.num_workers > 0))
    grid = model.feature_size(config.data.crop_size, config.data.crop_size)
    log = RunLog(run_dir)
    eval_loader = build_eval_loader(config, benchmark) if config.train.eval_interval else None
    best_hiou = resumed[1]["extra"].get("best_hiou", -1.0) if resumed else -1.0
    skipped_samples: list[str] = list(resumed[1]["extra"].get("skipped_samples", [])
                                      if resumed else [])

    def checkpoint(name: str, iteration: int, scores: dict | None = None) -> Path:
        return save_checkpoint(
            run_dir / "checkpoints" / name, model=model, iteration=iteration,
            config=config_to_dict(config), class_names=split.model_class_names,
            num_seen=split.num_seen, optimizers=optimizers.state_dict(),
            extra={"best_hiou": best_hiou, "skipped_samples": skipped_samples,
                   "scores": scores or {}})

    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    consecutive_bad = 0
    interval_iterations = 0
    total = config.train.iterations
    progress = _progress_bar(total, start, show_progress)
    tick = time.perf_counter()
    last_path = run_dir / "checkpoints" / "last.pt"
    try:
        for iteration in range(start, total):
            seed = iteration_seed(config.train.seed, iteration)
            torch.manual_seed(seed)
            rates = set_learning_rates(optimizers, iteration, total, config.optim)
            model.train()
            if is_step2_iteration(iteration, config.train.stage, config.train.mixed_period):
                generator = torch.Generator().manual_seed(seed)
                terms = classifier_step(model, config.train.batch_size, grid, optimizers,
                                        config.loss, config.train.gen_unseen_rate, generator,
                                        device, autocast)
            else:
                batch = next(loader)
                skipped_samples.extend(batch["skipped"])
                images = batch["image"].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                terms = feature_generation_step(model, images, labels, optimizers, config.loss,
                                                train_backbone, autocast)
            consecutive_bad = consecutive_bad + 1 if terms.pop("skipped") else 0
            if consecutive_bad:
                LOGGER.warning("iteration %d: non-finite loss %s, update skipped", iteration,
                               {k: v for k, v in terms.items() if not math.isfinite(v)})
            if consecutive_bad >= config.train.max_nonfinite_steps:
                raise TrainingError(
                    f"{consecutive_bad} non-finite losses in a row (train.max_nonfinite_steps = "
                    f"{config.train.max_nonfinite_steps}) at iteration {iteration}: lower the "
                    f"learning rates or check the data; last checkpoint: {last_path}")
            for name, value in terms.items():
                if math.isfinite(value):
                    totals[name] += value
                    counts[name] += 1
            done = iteration + 1
            interval_iterations += 1
            progress.update(1)
            if done % config.train.log_interval == 0 or done == total:
                elapsed = time.perf_counter() - tick
                record = {name: totals[name] / counts[name] for name in totals}
                record.update({f"lr_{name}": rate for name, rate in rates.items()})
                record["seconds_per_iteration"] = elapsed / interval_iterations
                log.write("train", done, record)
                progress.set_postfix({k: f"{v:.3g}" for k, v in list(record.items())[:4]})
                totals.clear()
                counts.clear()
                interval_iterations = 0
                tick = time.perf_counter()
            if eval_loader is not None and done % config.train.eval_interval == 0 \
                    and done != total:
                scores = evaluate_and_report(model, config, benchmark, device, None, "",
                                             eval_loader)
                log.write("val", done, _scalar_scores(scores))
                LOGGER.info("iteration %d: %s", done, format_scores_line(scores))
                if scores["hiou"] == scores["hiou"] and scores["hiou"] > best_hiou:
                    best_hiou = scores["hiou"]
                    checkpoint("best.pt", done, scores)
            if done % config.train.checkpoint_interval == 0 and done != total:
                checkpoint("last.pt", done)
    finally:
        progress.close()
    final_path = checkpoint("last.pt", total)
    title = f"{config.name}: {config.train.stage} after {total} iterations"
    scores = evaluate_and_report(model, config, benchmark, device, run_dir, title, eval_loader)
    log.write("val", total, _scalar_scores(scores))
    log.close()
    if skipped_samples:
        LOGGER.warning("%d unreadable samples were skipped: %s", len(skipped_samples),
                       sorted(set(skipped_samples))[:20])
    LOGGER.info("final: %s", format_scores_line(scores))
    return TrainResult(run_dir, final_path, scores)


def _scalar_scores(scores: dict) -> dict[str, float]:
    return {key: value for key, value in scores.items() if isinstance(value, float)}


def _check_same_classes(state: dict, class_names: list[str], path: str | Path) -> None:
    if state.get("class_names") != class_names:
        raise CheckpointError(f"{path} was trained for classes {state.get('class_names')}, but "
                              f"this config has {class_names} (seen then unseen)")


def _progress_bar(total: int, start: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="it", dynamic_ncols=True,
                desc="train")
