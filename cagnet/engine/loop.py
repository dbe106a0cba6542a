"""The one training loop that drives every `Method`: exact resume (what is random in iteration t
is seeded from (seed, t)), graceful stops, the non-finite policy, logs, checkpoints, evaluation."""

import abc
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cagnet.config import TrainConfig
from cagnet.datasets.segmentation import collate_samples
from cagnet.engine.checkpoint import (check_same_classes, keep_previous, load_weights,
                                      newest_valid_checkpoint, save_checkpoint)
from cagnet.engine.execution import Execution
from cagnet.engine.faults import NonFiniteMonitor, scale_learning_rates, unwrap_worker_error
from cagnet.engine.run_dir import (check_free_space, estimate_checkpoint_bytes, log_size,
                                   open_run_log, prepare_run_dir, truncate_log,
                                   warn_config_changes)
from cagnet.engine.run_state import RunState
from cagnet.engine.schedules import iteration_seed
from cagnet.engine.signals import RunStopped, StopRequest, shield_worker_from_stop_signals
from cagnet.errors import CagnetError, CheckpointError, TrainingError
from cagnet.report.tables import format_scores_line
from cagnet.utils.runtime import RunLog

LOGGER = logging.getLogger("cagnet")


@dataclass
class LoopSettings:
    """The loop's plain values (`train.*` by default)."""

    iterations: int
    seed: int = 0
    log_interval: int = 50
    checkpoint_interval: int = 1000
    eval_interval: int = 0
    best_metric: str = "miou_seen"
    on_nonfinite: str = "stop"
    max_nonfinite_steps: int = 5
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3

    @classmethod
    def from_train(cls, train: TrainConfig, iterations: int | None = None) -> "LoopSettings":
        values = {item.name: getattr(train, item.name) for item in fields(cls)}  # same names
        values["iterations"] = train.iterations if iterations is None else iterations
        return cls(**values)


@dataclass
class TrainResult:
    run_dir: Path | None
    checkpoint: Path | None
    scores: dict | None
    skipped_samples: list[str] = field(default_factory=list)


class Method(abc.ABC):
    """A training method: sets `model`, `optimizers`, `dataset` and `step`; hooks have defaults."""

    name = "train"
    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    dataset: Dataset | None = None
    num_workers = 0
    config: dict | None = None  # the resolved config, stored in checkpoints and config.yaml
    class_names: list[str] = []
    num_seen = 0

    def needs_batch(self, iteration: int) -> bool:
        """Whether iteration `iteration` consumes a training batch."""
        return self.dataset is not None

    def batches_before(self, iteration: int) -> int:
        """How many training batches the iterations before `iteration` consumed."""
        return iteration if self.dataset is not None else 0

    def set_learning_rates(self, iteration: int) -> dict[str, float]:
        """Set every group's rate for `iteration`; returns the base rates (logged)."""
        return {}

    @abc.abstractmethod
    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        """One update: its terms as floats plus `skipped` (1.0: non-finite, nothing updated)."""

    def initialise(self) -> None:
        """Initial weights of a run that does not resume."""

    def write_run_files(self, run_dir: Path) -> None:
        """Files describing the run (config.yaml, protocol.json), written at the start."""

    def validate(self, iteration: int, log: RunLog) -> dict | None:
        """Periodic validation scores (`LoopSettings.best_metric` picks `best.pt`), or None."""
        return None

    def evaluate(self, report_dir: Path | None, log: RunLog) -> dict | None:
        """The final evaluation (reports written into `report_dir` when given), or None."""
        return None

    def finish(self, run_dir: Path | None) -> None:
        """After the final checkpoint and evaluation (e.g. write a derived file)."""

    def extra_state(self) -> dict:
        """Method state a checkpoint must carry besides model and optimisers."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass


def run(method: Method, settings: LoopSettings, run_dir: str | Path | None, *,
        execution: Execution | None = None, resume: bool = False, overwrite: bool = False,
        show_progress: bool = True) -> TrainResult:
    """Run `method` for `settings.iterations` into `run_dir`; raises RunStopped on a signal."""
    execution = execution or Execution.single(next(method.model.parameters()).device)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and execution.is_main_process:
        prepare_run_dir(run_dir, resume, overwrite)
    resumed = newest_valid_checkpoint(run_dir) if resume and run_dir is not None else None
    if resumed is not None and resumed[1]["iteration"] >= settings.iterations:
        LOGGER.warning("%s is finished (iteration %d of %d): nothing to do and nothing changed; "
                       "to train longer, resume with a larger train.iterations", run_dir,
                       resumed[1]["iteration"], settings.iterations)
        return TrainResult(run_dir, resumed[0], resumed[1]["extra"].get("scores") or None)
    extended_from = resumed[1]["extra"].get("iterations") if resumed is not None else None
    if resumed is None:
        method.initialise()
    elif method.config is not None:
        warn_config_changes(resumed[1].get("config", {}), method.config, resumed[0])
    if run_dir is not None and execution.is_main_process:
        method.write_run_files(run_dir)
        check_free_space(run_dir, estimate_checkpoint_bytes(method.model, method.optimizers),
                         keeps_best=bool(settings.eval_interval))
    loop = TrainingLoop(method, settings, run_dir, execution, show_progress)
    if resumed is not None:
        loop.restore(*resumed)
        if execution.is_main_process:
            truncate_log(run_dir / "log.jsonl", resumed[1]["extra"].get("log_bytes"),
                         loop.state.iteration)
        LOGGER.info("resuming %s at iteration %d", resumed[0], loop.state.iteration)
        if extended_from is not None and extended_from != settings.iterations:
            loop.extension = {"event": "extend", "from_iterations": extended_from,
                              "to_iterations": settings.iterations}
    elif run_dir is not None:
        loop.checkpoint("last.pt")  # a resume and rollback point before the first interval
    return loop.run(purge_step=loop.state.iteration + 1 if resumed is not None else None)


class TrainingLoop:
    """The moving parts of one run; `checkpoint` and `restore` are exact inverses."""

    def __init__(self, method: Method, settings: LoopSettings, run_dir: Path | None,
                 execution: Execution, show_progress: bool) -> None:
        self.method, self.settings, self.run_dir = method, settings, run_dir
        self.execution, self.show_progress = execution, show_progress and execution.is_main_process
        self.state = RunState()
        self.faults = NonFiniteMonitor(settings.on_nonfinite, settings.max_nonfinite_steps,
                                       settings.rollback_lr_factor, settings.max_rollbacks)
        self.saved_iteration = -1
        self.log = self.batches = self.progress = None
        self.extension: dict | None = None  # a resumed run told to train longer

    def _make_batches(self, iteration: int):
        """A fresh loader iterator whose first batch is the next one `iteration` needs."""
        dataset = self.method.dataset
        if dataset is None:
            return None
        sampler = self.execution.batch_sampler(  # this rank's share of each global batch
            len(dataset), self.settings.seed, self.method.batches_before(iteration))
        workers = self.method.num_workers
        return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples,
                               num_workers=workers, persistent_workers=workers > 0,
                               worker_init_fn=shield_worker_from_stop_signals))

    def run(self, purge_step: int | None = None) -> TrainResult:
        total = self.settings.iterations
        self.log = open_run_log(self.run_dir, purge_step) \
            if self.run_dir is not None and self.execution.is_main_process \
            else RunLog(self.run_dir or Path("."), enabled=False)
        self.batches = self._make_batches(self.state.iteration)
        if self.extension:
            self.log.write("run", self.state.iteration, self.extension)
        from tqdm import tqdm
        self.progress = tqdm(total=total, initial=self.state.iteration, desc=self.method.name,
                             unit="it", disable=not self.show_progress, dynamic_ncols=True)
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
        torch.manual_seed(self.execution.seed(iteration_seed(self.settings.seed, iteration)))
        rates = self.method.set_learning_rates(iteration)
        rates = scale_learning_rates(self.method.optimizers, rates, self.faults.lr_scale)
        batch = self._next_batch(stop) if self.method.needs_batch(iteration) else None
        if batch is not None:
            self.state.skipped_samples.extend(batch["skipped"])
        terms = self.method.step(iteration, batch)
        action = self.faults.observe(bool(terms.pop("skipped", 0.0)))
        if action != "ok":
            LOGGER.warning("%s iteration %d: non-finite loss %s, update skipped", self.method.name,
                           iteration, {k: v for k, v in terms.items() if not math.isfinite(v)})
        if action == "rollback" and self.run_dir is not None:
            return self._rollback(iteration)
        if action in ("rollback", "stop"):
            raise TrainingError(self.faults.stop_message(iteration, self._last_checkpoint()))
        self.state.interval.add(terms)
        self.state.iteration = iteration + 1
        self.progress.update(1)
        self._after_step(self.state.iteration, rates)
        if self.execution.any_rank(stop.requested):  # all ranks stop at the same iteration
            self._stop(stop)

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
        settings = self.settings
        if done % settings.log_interval == 0 or done == settings.iterations:
            record = self.state.interval.record(rates)
            self.log.write("train", done, record)
            self.progress.set_postfix({k: f"{v:.3g}" for k, v in list(record.items())[:4]})
        if settings.eval_interval and done % settings.eval_interval == 0 \
                and done != settings.iterations:
            scores = self.method.validate(done, self.log)
            if scores is not None:
                self.log.write("validation", done, scalar_scores(scores))
                LOGGER.info("iteration %d: %s", done, format_scores_line(scores))
                score = scores.get(settings.best_metric, math.nan)
                if math.isfinite(score) and score > self.state.best_score:
                    self.state.best_score = score
                    self.checkpoint("best.pt", scores)
        # No periodic checkpoint inside a non-finite streak: a rollback must land before it.
        if done % settings.checkpoint_interval == 0 and done != settings.iterations \
                and not self.faults.streak:
            self.checkpoint("last.pt")

    def checkpoint(self, name: str, scores: dict | None = None) -> Path | None:
        """Write `checkpoints/<name>` (for `last.pt`, the old one becomes `previous.pt`)."""
        if self.run_dir is None:
            return None
        path = self.run_dir / "checkpoints" / name
        if not self.execution.is_main_process:  # every rank holds the same weights
            return path
        if name == "last.pt":
            keep_previous(path)
        method = self.method
        extra = self.state.extra(self.faults.state_dict(), log_size(self.run_dir), scores)
        optimizers = {key: optimizer.state_dict() for key, optimizer in method.optimizers.items()}
        save_checkpoint(path, model=method.model, iteration=self.state.iteration,
                        config=method.config or {}, class_names=method.class_names,
                        num_seen=method.num_seen, optimizers=optimizers,
                        extra={**extra, **self.execution.state_dict(), **method.extra_state(),
                               "iterations": self.settings.iterations})
        if name == "last.pt":
            self.saved_iteration = self.state.iteration
        return path

    def restore(self, path: Path, state: dict) -> None:
        """Load model, optimisers, loop and method state from a checkpoint of this run."""
        method = self.method
        check_same_classes(state, method.class_names, path)
        load_weights(method.model, state, path, (method.config or {}).get("model"))
        try:
            for key, optimizer in method.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][key])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: optimiser state does not match this run's "
                                  f"optimisers ({error!r})") from None
        extra = state.get("extra", {})
        self.state.load(state["iteration"], extra)
        self.execution.load_state_dict(extra)  # the fp16 loss scale
        self.faults.load_state_dict(extra.get("nonfinite", {}))
        method.load_extra_state(extra)
        self.saved_iteration = state["iteration"] if path.name == "last.pt" else -1

    def _rollback(self, iteration: int) -> None:
        """Continue from the newest checkpoint outside a non-finite streak, with lower rates."""
        found = newest_valid_checkpoint(self.run_dir, usable=lambda state: not state["extra"]
                                        .get("nonfinite", {}).get("streak", 0))
        if found is None:
            raise TrainingError(self.faults.stop_message(iteration, "none to roll back to"))
        path, state = found
        self.faults.record_rollback()
        counters = self.faults.state_dict()
        self.restore(path, state)
        self.faults.load_state_dict(counters)
        LOGGER.warning("iteration %d: %d non-finite losses in a row; rolled back to %s "
                       "(iteration %d) with learning rates x%g (rollback %d of %d)", iteration,
                       self.settings.max_nonfinite_steps, path, self.state.iteration,
                       self.faults.lr_scale, self.faults.rollbacks, self.faults.max_rollbacks)
        self.log.write("fault", iteration, {"event": "rollback", "to_iteration":
                                            self.state.iteration, **counters})
        self.batches = self._make_batches(self.state.iteration)
        self.progress.n = self.state.iteration
        self.progress.refresh()

    def _stop(self, stop: StopRequest) -> None:
        where = "no run folder, nothing saved"
        if self.run_dir is not None:
            path = self.run_dir / "checkpoints" / "last.pt"
            if self.saved_iteration != self.state.iteration:
                path = self.checkpoint("last.pt")
            where = f"checkpoint written to {path}; continue with the same command plus --resume"
        raise RunStopped(f"stopped by {stop.signal_name} after iteration {self.state.iteration} "
                         f"of {self.settings.iterations}; {where}", stop.exit_code)

    def _last_checkpoint(self) -> str:
        if self.run_dir is None:
            return "none (no run folder)"
        path = self.run_dir / "checkpoints" / "last.pt"
        return f"{path} (iteration {self.saved_iteration})" if self.saved_iteration >= 0 \
            else str(path)

    def _finish(self) -> TrainResult:
        final_path = self.checkpoint("last.pt")
        report_dir = self.run_dir if self.execution.is_main_process else None
        try:
            scores = self.method.evaluate(report_dir, self.log)
        except CagnetError as error:
            raise type(error)(f"{error} (training itself is complete: {final_path} is saved; "
                              f"evaluate it with `cagnet eval --checkpoint {final_path}` once "
                              "this is fixed)") from None
        if scores is not None:
            self.log.write("test", self.settings.iterations, scalar_scores(scores))
            LOGGER.info("final: %s", format_scores_line(scores))
        self.method.finish(report_dir)
        return TrainResult(self.run_dir, final_path, scores, list(self.state.skipped_samples))


def scalar_scores(scores: dict) -> dict[str, float]:
    """The float entries of a scores dict (what `log.jsonl` and TensorBoard record)."""
    return {key: value for key, value in scores.items() if isinstance(value, float)}
