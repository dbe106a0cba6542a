"""The training loop: step 1 (`train.stage: step1`) or the mixed finetune schedule
(`train.stage: finetune`), iteration-based, resumable, with logging, checkpoints and evaluation.

Everything random in iteration t is seeded from (seed, t) and every schedule is a function of
t; the loop's own counters travel in the checkpoint (`run_state.py`). A run resumed from a
checkpoint at iteration t therefore continues exactly as if never stopped (bit for bit on the
CPU with `train.deterministic: true`), whether it was killed, pre-empted (SIGTERM) or
interrupted (SIGINT, `signals.py`). Non-finite losses follow `train.on_nonfinite` (`faults.py`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cagnet.builders import (Benchmark, build_benchmark, build_datasets, build_model,
                             load_backbone_init, resolve_device)
from cagnet.config import Config, config_to_dict, save_config
from cagnet.datasets.segmentation import collate_samples
from cagnet.engine.checkpoint import (keep_previous, load_checkpoint, load_model_state,
                                      newest_valid_checkpoint, save_checkpoint)
from cagnet.engine.execution import Execution, build_execution
from cagnet.engine.faults import (CleanWorkerErrors, NonFiniteMonitor, scale_learning_rates,
                                  unwrap_worker_error)
from cagnet.engine.optim import Optimizers, build_optimizers, set_learning_rates
from cagnet.engine.run_dir import (check_free_space, check_listed_files,
                                   estimate_checkpoint_bytes, log_size, open_run_log,
                                   prepare_run_dir, report_skipped_samples, truncate_log,
                                   warn_config_changes)
from cagnet.engine.run_state import RunState
from cagnet.engine.schedules import is_step2_iteration, iteration_seed
from cagnet.engine.signals import RunStopped, StopRequest, shield_worker_from_stop_signals
from cagnet.engine.steps import classifier_step, feature_generation_step
from cagnet.engine.protocol import write_protocol_card
from cagnet.engine.validation import (build_eval_loader, evaluate_and_report,
                                      log_evaluation_panel)
from cagnet.errors import CagnetError, CheckpointError, TrainingError
from cagnet.report.tables import format_scores_line
from cagnet.utils import distributed
from cagnet.utils.runtime import RunLog, apply_run_settings

LOGGER = logging.getLogger("cagnet")
__all__ = ["TrainResult", "prepare_run_dir", "step1_iterations_before", "train"]


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


def train(config: Config, run_dir: str | Path, *, resume: bool = False,
          init_checkpoint: str | Path | None = None, overwrite: bool = False,
          show_progress: bool = True, run_class: type | None = None) -> TrainResult:
    """Run `config.train.stage` into `run_dir` and evaluate the final model.

    Args:
        config: the resolved config.
        run_dir: output folder (config.yaml, log.jsonl, tensorboard/, checkpoints/, metrics.json).
        resume: continue from the newest valid checkpoint in `run_dir`.
        init_checkpoint: a cagnet checkpoint whose model weights start this run (the step-1
            model for `finetune`).
        overwrite: allow starting over in a folder that already holds checkpoints.
        run_class: a `TrainingRun` subclass that changes one step (self-training's
            zero-embedding switch); `TrainingRun` by default.

    Raises:
        RunStopped: SIGTERM / SIGINT stopped the run after writing a checkpoint.
        CagnetError: bad data, config or checkpoint; TrainingError for non-finite losses.
    """
    run_dir = Path(run_dir)
    # Under torchrun: join the process group; only rank 0 writes into the run directory.
    execution = build_execution(config.train, resolve_device(config.train.device))
    device = execution.device
    if execution.is_main_process:
        prepare_run_dir(run_dir, resume, overwrite)
    distributed.barrier()
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    benchmark = build_benchmark(config)
    model = build_model(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    resumed = newest_valid_checkpoint(run_dir) if resume else None
    if resumed is None:
        _initialise_weights(model, config, benchmark, init_checkpoint)
    else:
        _check_same_classes(resumed[1], benchmark.split.model_class_names, resumed[0])
        warn_config_changes(resumed[1].get("config", {}), config_to_dict(config), resumed[0])
    if execution.is_main_process:
        save_config(config, run_dir / "config.yaml")
        write_protocol_card(run_dir, config, benchmark)
    execution.prepare(model)  # to the device, channels_last / compile, rank 0's weights
    optimizers = build_optimizers(model, config.optim, config.train.stage == "step1")
    check_free_space(run_dir, estimate_checkpoint_bytes(model, optimizers),
                     keeps_best=bool(config.train.eval_interval))
    run = (run_class or TrainingRun)(config, run_dir, benchmark, model, optimizers, device,
                                     show_progress and execution.is_main_process, execution)
    if resumed is not None:
        run.restore(*resumed)
        if execution.is_main_process:
            truncate_log(run_dir / "log.jsonl", resumed[1]["extra"].get("log_bytes"),
                         run.state.iteration)
        LOGGER.info("resuming %s at iteration %d", resumed[0], run.state.iteration)
    else:
        run.checkpoint("last.pt")  # a resume and rollback point before the first interval
    return run.run(purge_step=run.state.iteration + 1 if resumed is not None else None)


def _initialise_weights(model: torch.nn.Module, config: Config, benchmark: Benchmark,
                        init_checkpoint: str | Path | None) -> None:
    if init_checkpoint is not None:
        state = load_checkpoint(init_checkpoint)
        _check_same_classes(state, benchmark.split.model_class_names, init_checkpoint)
        load_model_state(model, state, init_checkpoint)
        LOGGER.info("model initialised from %s (iteration %d)", init_checkpoint,
                    state["iteration"])
    elif config.model.init:
        missing = load_backbone_init(model, config.model.init)
        LOGGER.info("backbone initialised from %s (%d keys kept their init)", config.model.init,
                    len(missing))


class TrainingRun:
    """One run's moving parts: model, optimisers, data, log, and the state a checkpoint keeps.

    `run()` is the loop; each iteration is `_step` (one update) then `_after_step` (log,
    evaluation, checkpoint). `checkpoint` / `restore` are exact inverses.
    """

    def __init__(self, config: Config, run_dir: Path, benchmark: Benchmark,
                 model: torch.nn.Module, optimizers: Optimizers, device: torch.device,
                 show_progress: bool, execution: Execution | None = None) -> None:
        self.config, self.run_dir, self.benchmark = config, run_dir, benchmark
        self.model, self.optimizers, self.device = model, optimizers, device
        self.show_progress = show_progress
        train = config.train
        # Precision, memory format, rank and batch share (a single process unless given).
        self.execution = execution or build_execution(train, device, join_process_group=False)
        self.state = RunState()
        self.faults = NonFiniteMonitor(train.on_nonfinite, train.max_nonfinite_steps,
                                       train.rollback_lr_factor, train.max_rollbacks)
        self.autocast = self.execution.autocast
        self.dataset = build_datasets(config.data, benchmark.split, train.seed, train=True)
        check_listed_files(self.dataset, "data.train_list", config.data.train_list,
                            skip=config.data.on_bad_sample == "skip")
        eval_loader = build_eval_loader(config, benchmark)
        check_listed_files(eval_loader.dataset, "data.val_list", config.data.val_list, False)
        # Each rank evaluates a strided share; evaluate() all-reduces the confusion matrices.
        self.eval_loader = CleanWorkerErrors(
            self.execution.evaluation_loader(eval_loader, config.eval.max_images))
        self.grid = model.feature_size(config.data.crop_size, config.data.crop_size)
        self.saved_iteration = -1
        self.log = self.batches = self.progress = None

    def _make_batches(self, iteration: int):
        """A fresh loader iterator whose first batch is the one of `iteration`."""
        train = self.config.train
        sampler = self.execution.batch_sampler(  # this rank's share of each global batch
            len(self.dataset), train.seed,
            step1_iterations_before(iteration, train.stage, train.mixed_period))
        workers = self.config.data.num_workers
        shield = shield_worker_from_stop_signals if workers else None
        return iter(DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate_samples,
                               num_workers=workers, persistent_workers=workers > 0,
                               worker_init_fn=shield))

    def run(self, purge_step: int | None = None) -> TrainResult:
        total = self.config.train.iterations
        self.log = open_run_log(self.run_dir, purge_step) if self.execution.is_main_process \
            else RunLog(self.run_dir, enabled=False)
        self.batches = self._make_batches(self.state.iteration)
        self.progress = _progress_bar(total, self.state.iteration, self.show_progress)
        try:
            with StopRequest() as stop:
                while self.state.iteration < total:
                    self._iteration(stop)
            self.progress.close()
            return self._finish()
        finally:
            self.progress.close()
            self.log.close()

    def _iteration(self, stop: StopRequest) -> None:
        iteration = self.state.iteration
        terms, rates = self._step(iteration, stop)
        action = self.faults.observe(bool(terms.pop("skipped")))
        if action != "ok":
            LOGGER.warning("iteration %d: non-finite loss %s, update skipped", iteration,
                           {k: v for k, v in terms.items() if not math.isfinite(v)})
        if action == "rollback":
            return self._rollback(iteration)
        if action == "stop":
            raise TrainingError(self.faults.stop_message(iteration, self._last_checkpoint()))
        self.state.interval.add(terms)
        self.state.iteration = iteration + 1
        self.progress.update(1)
        self._after_step(self.state.iteration, rates)
        if self.execution.any_rank(stop.requested):  # all ranks stop at the same iteration
            self._stop(stop)

    def _step(self, iteration: int, stop: StopRequest) -> tuple[dict[str, float], dict]:
        """One update at `iteration`; returns its loss terms (plus `skipped`) and base rates."""
        train = self.config.train
        seed = iteration_seed(train.seed, iteration)
        torch.manual_seed(self.execution.seed(seed))  # per-rank noise; step-2 draws use `seed`
        rates = set_learning_rates(self.optimizers, iteration, train.iterations, self.config.optim)
        rates = scale_learning_rates(self.optimizers, rates, self.faults.lr_scale)
        self.model.train()
        if is_step2_iteration(iteration, train.stage, train.mixed_period):
            generator = torch.Generator().manual_seed(seed)
            terms = classifier_step(self.model, train.batch_size, self.grid, self.optimizers,
                                    self.config.loss, train.gen_unseen_rate, generator,
                                    self.device, self.autocast, self.execution.scaler,
                                    self.execution.sync)
            return terms, rates
        batch = self._next_batch(stop)
        self.state.skipped_samples.extend(batch["skipped"])
        images = self.execution.images_to_device(batch["image"])
        labels = batch["label"].to(self.device, non_blocking=True)
        terms = feature_generation_step(self.model, images, labels, self.optimizers,
                                        self.config.loss, train.stage == "step1", self.autocast,
                                        self.execution.scaler, self.execution.sync)
        return terms, rates

    def _next_batch(self, stop: StopRequest) -> dict:
        try:
            return next(self.batches)
        except CagnetError as error:  # raised in a worker: keep its own one-line message
            raise unwrap_worker_error(error) from None
        except RuntimeError:
            if stop.requested:  # the signal also reached (and ended) the loader's workers
                self._stop(stop)
            raise

    def _after_step(self, done: int, rates: dict[str, float]) -> None:
        train = self.config.train
        if done % train.log_interval == 0 or done == train.iterations:
            record = self.state.interval.record(rates)
            self.log.write("train", done, record)
            self.progress.set_postfix({k: f"{v:.3g}" for k, v in list(record.items())[:4]})
        if train.eval_interval and done % train.eval_interval == 0 and done != train.iterations:
            scores = evaluate_and_report(self.model, self.config, self.benchmark, self.device,
                                         None, "", self.eval_loader)
            self.log.write("val", done, _scalar_scores(scores))
            log_evaluation_panel(self.log, done, self.model, self.config, self.benchmark,
                                 self.device, self.eval_loader)
            LOGGER.info("iteration %d: %s", done, format_scores_line(scores))
            if scores["hiou"] == scores["hiou"] and scores["hiou"] > self.state.best_hiou:
                self.state.best_hiou = scores["hiou"]
                self.checkpoint("best.pt", scores)
        # No periodic checkpoint inside a non-finite streak: a rollback must land before it.
        if done % train.checkpoint_interval == 0 and done != train.iterations \
                and not self.faults.streak:
            self.checkpoint("last.pt")

    def checkpoint(self, name: str, scores: dict | None = None) -> Path:
        """Write `checkpoints/<name>` (for `last.pt`, the old one becomes `previous.pt`)."""
        path = self.run_dir / "checkpoints" / name
        if not self.execution.is_main_process:  # every rank holds the same weights
            return path
        if name == "last.pt":
            keep_previous(path)
        split = self.benchmark.split
        extra = self.state.extra(self.faults.state_dict(), log_size(self.run_dir), scores)
        save_checkpoint(path, model=self.model, iteration=self.state.iteration,
                        config=config_to_dict(self.config), class_names=split.model_class_names,
                        num_seen=split.num_seen, optimizers=self.optimizers.state_dict(),
                        extra={**extra, **self.execution.state_dict()})
        if name == "last.pt":
            self.saved_iteration = self.state.iteration
        return path

    def restore(self, path: Path, state: dict) -> None:
        """Load model, optimisers and loop state from a checkpoint of this run."""
        load_model_state(self.model, state, path)
        try:
            self.optimizers.load_state_dict(state["optimizers"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: optimiser state does not match this config's "
                                  f"optimisers ({error})") from None
        extra = state.get("extra", {})
        self.state.load(state["iteration"], extra)
        self.execution.load_state_dict(extra)  # the fp16 loss scale
        self.faults.load_state_dict(extra.get("nonfinite", {}))
        self.saved_iteration = state["iteration"] if path.name == "last.pt" else -1

    def _rollback(self, iteration: int) -> None:
        """Reload the newest checkpoint written outside a non-finite streak and continue from
        it with every learning rate multiplied by `train.rollback_lr_factor` once more."""
        found = newest_valid_checkpoint(
            self.run_dir, usable=lambda state: not state["extra"].get("nonfinite", {})
            .get("streak", 0))
        if found is None:
            raise TrainingError(self.faults.stop_message(iteration, "none to roll back to"))
        path, state = found
        self.faults.record_rollback()
        counters = self.faults.state_dict()
        self.restore(path, state)
        self.faults.load_state_dict(counters)
        LOGGER.warning("iteration %d: %d non-finite losses in a row; rolled back to %s "
                       "(iteration %d) with learning rates x%g (rollback %d of %d)", iteration,
                       self.config.train.max_nonfinite_steps, path, self.state.iteration,
                       self.faults.lr_scale, self.faults.rollbacks, self.faults.max_rollbacks)
        self.log.write("fault", iteration, {"event": "rollback", "to_iteration":
                                            self.state.iteration, **counters})
        self.batches = self._make_batches(self.state.iteration)
        self.progress.n = self.state.iteration
        self.progress.refresh()

    def _stop(self, stop: StopRequest) -> None:
        path = self.run_dir / "checkpoints" / "last.pt"
        if self.saved_iteration != self.state.iteration:
            path = self.checkpoint("last.pt")
        raise RunStopped(f"stopped by {stop.signal_name} after iteration {self.state.iteration} "
                         f"of {self.config.train.iterations}; checkpoint written to {path}; "
                         "continue with the same command plus --resume", stop.exit_code)

    def _last_checkpoint(self) -> str:
        path = self.run_dir / "checkpoints" / "last.pt"
        return f"{path} (iteration {self.saved_iteration})" if self.saved_iteration >= 0 \
            else str(path)

    def _finish(self) -> TrainResult:
        total = self.config.train.iterations
        final_path = self.checkpoint("last.pt")
        title = f"{self.config.name}: {self.config.train.stage} after {total} iterations"
        try:
            report_dir = self.run_dir if self.execution.is_main_process else None
            scores = evaluate_and_report(self.model, self.config, self.benchmark, self.device,
                                         report_dir, title, self.eval_loader)
        except CagnetError as error:
            raise type(error)(f"{error} (training itself is complete: {final_path} is saved; "
                              f"evaluate it with `cagnet eval --checkpoint {final_path}` once "
                              "this is fixed)") from None
        self.log.write("val", total, _scalar_scores(scores))
        log_evaluation_panel(self.log, total, self.model, self.config, self.benchmark,
                             self.device, self.eval_loader)
        if self.config.data.on_bad_sample == "skip" and self.execution.is_main_process:
            report_skipped_samples(self.run_dir, self.state.skipped_samples)
        LOGGER.info("final: %s", format_scores_line(scores))
        return TrainResult(self.run_dir, final_path, scores)


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
