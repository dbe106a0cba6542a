"""CaGNet training (step 1, or the mixed finetune schedule) as a method of the one loop."""

import logging
from pathlib import Path

import torch

from cagnet.config import Config, config_to_dict, save_config
from cagnet.datasets.build import (Benchmark, build_benchmark, build_dataset, build_eval_loader,
                                   with_absolute_paths)
from cagnet.engine import loop
from cagnet.engine.checkpoint import (check_same_classes, load_backbone_init, load_checkpoint,
                                      load_weights)
from cagnet.engine.evaluate import evaluate_and_report, log_evaluation_panel
from cagnet.engine.execution import Execution, build_execution
from cagnet.engine.faults import CleanWorkerErrors
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.protocol import protocol_card
from cagnet.engine.run_dir import check_listed_files, report_skipped_samples
from cagnet.engine.schedules import is_step2_iteration, iteration_seed
from cagnet.engine.steps import (LabelDraw, classifier_step, feature_generation_step,
                                 zero_gradient_steps)
from cagnet.models.build import build_cagnet
from cagnet.utils import distributed
from cagnet.utils.io import atomic_write_json
from cagnet.utils.runtime import RunLog, apply_run_settings, resolve_device

LOGGER = logging.getLogger("cagnet")


def step1_iterations_before(iteration: int, stage: str, period: int) -> int:
    """How many step-1 iterations (each consuming one batch) come before `iteration`."""
    if stage != "finetune":
        return iteration
    full_cycles, remainder = divmod(iteration, 2 * period)
    return full_cycles * period + min(remainder, period)


class BenchmarkTraining(loop.Method):
    """A method trained on the training images of `benchmark`: run files and evaluation."""

    def __init__(self, config: Config, benchmark: Benchmark, model: torch.nn.Module,
                 execution: Execution) -> None:
        self.settings, self.benchmark, self.model = config, benchmark, model
        self.execution, self.config = execution, config_to_dict(config)
        self.class_names = benchmark.split.model_class_names
        self.num_seen = benchmark.split.num_seen
        self.dataset = build_dataset(config.data, benchmark.split, config.train.seed)
        self.num_workers = config.data.num_workers

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.settings, run_dir / "config.yaml")
        atomic_write_json(run_dir / "protocol.json", protocol_card(
            self.settings, self.benchmark.split, self.benchmark.embedding_dim))

    def _evaluate(self, report_dir: Path | None, title: str, loader) -> dict:
        card = protocol_card(self.settings, self.benchmark.split, self.benchmark.embedding_dim)
        return evaluate_and_report(self.model, loader, self.settings.eval, self.benchmark.split,
                                   card, self.execution.device, report_dir, title,
                                   self.execution.autocast)


class CaGNetTraining(BenchmarkTraining):
    """Step 1; in the finetune stage every other `train.mixed_period` block is step 2."""

    def __init__(self, config: Config, benchmark: Benchmark, model: torch.nn.Module,
                 execution: Execution, init_checkpoint: str | Path | None = None) -> None:
        super().__init__(config, benchmark, model, execution)
        self.init_checkpoint, self.name = init_checkpoint, config.train.stage
        self.cagnet_optimizers = build_optimizers(model, config.optim,
                                                  config.train.stage == "step1")
        self.optimizers = self.cagnet_optimizers.named()
        check_listed_files(self.dataset, "data.train_list", config.data.train_list,
                           skip=config.data.on_bad_sample == "skip")
        eval_loader = build_eval_loader(config, benchmark.split)
        check_listed_files(eval_loader.dataset, "data.val_list", config.data.val_list, False)
        # Each rank evaluates a strided share; evaluate() all-reduces the confusion matrices.
        self.eval_loader = CleanWorkerErrors(
            execution.evaluation_loader(eval_loader, config.eval.max_images))
        self.validation_loader = CleanWorkerErrors(execution.evaluation_loader(
            build_eval_loader(config, benchmark.split, "validation"))) \
            if config.train.eval_interval else None
        self.grid = model.feature_size(config.data.crop_size, config.data.crop_size)

    def needs_batch(self, iteration: int) -> bool:
        train = self.settings.train
        return not is_step2_iteration(iteration, train.stage, train.mixed_period)

    def batches_before(self, iteration: int) -> int:
        train = self.settings.train
        return step1_iterations_before(iteration, train.stage, train.mixed_period)

    def initialise(self) -> None:
        if self.init_checkpoint is not None:
            state = load_checkpoint(self.init_checkpoint)
            check_same_classes(state, self.class_names, self.init_checkpoint)
            load_weights(self.model, state, self.init_checkpoint, self.config["model"])
            LOGGER.info("model initialised from %s (iteration %d)", self.init_checkpoint,
                        state["iteration"])
        elif self.settings.model.init:
            missing = load_backbone_init(self.model, self.settings.model.init)
            LOGGER.info("backbone initialised from %s (%d keys kept their init)",
                        self.settings.model.init, len(missing))

    def set_learning_rates(self, iteration: int) -> dict[str, float]:
        return set_learning_rates(self.cagnet_optimizers, iteration,
                                  self.settings.train.iterations, self.settings.optim)

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        config, execution = self.settings, self.execution
        self.model.train()
        if batch is None:  # step 2: per-rank noise is seeded by the loop, the draw here
            generator = torch.Generator().manual_seed(iteration_seed(config.train.seed, iteration))
            draw = LabelDraw(config.train.batch_size, self.grid, config.train.gen_unseen_rate,
                             generator)
            terms = classifier_step(self.model, self.cagnet_optimizers, config.loss, draw,
                                    execution.step_context)
            if config.train.step2_zero_gradient_steps and not terms["skipped"]:
                zero_gradient_steps(self.model, self.cagnet_optimizers,
                                    config.loss.step2_generator_cls_fake != 0)
            return terms
        images = execution.images_to_device(batch["image"])
        labels = batch["label"].to(execution.device, non_blocking=True)
        return feature_generation_step(self.model, images, labels, self.cagnet_optimizers,
                                       config.loss, execution.step_context,
                                       config.train.stage == "step1")

    def validate(self, iteration: int, log: RunLog) -> dict:
        """Scores on the validation images (never the test list)."""
        scores = self._evaluate(None, "", self.validation_loader)
        log_evaluation_panel(log, iteration, self.model, self.validation_loader,
                             self.settings.data.mean_bgr, self.execution.device, self.class_names)
        return scores

    def evaluate(self, report_dir: Path | None, log: RunLog) -> dict:
        train = self.settings.train
        scores = self._evaluate(report_dir, f"{self.settings.name}: {train.stage} after "
                                            f"{train.iterations} iterations", self.eval_loader)
        log_evaluation_panel(log, train.iterations, self.model, self.eval_loader,
                             self.settings.data.mean_bgr, self.execution.device, self.class_names)
        return scores


def train(config: Config, run_dir: str | Path, *, resume: bool = False,
          init_checkpoint: str | Path | None = None, overwrite: bool = False,
          show_progress: bool = True, method_class: type = CaGNetTraining) -> loop.TrainResult:
    """Run `config.train.stage` into `run_dir` (from `init_checkpoint`) and evaluate the model."""
    config = with_absolute_paths(config)  # the run works from any folder
    # Under torchrun: join the process group; only rank 0 writes into the run directory.
    execution = build_execution(config.train, resolve_device(config.train.device))
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    benchmark = build_benchmark(config)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                         config.data.mean_bgr)
    method = method_class(config, benchmark, model, execution, init_checkpoint)
    distributed.barrier()
    execution.prepare(model)  # to the device, channels_last / compile, rank 0's weights
    result = loop.run(method, loop.LoopSettings.from_train(config.train), run_dir,
                      execution=execution, resume=resume, overwrite=overwrite,
                      show_progress=show_progress)
    if config.data.on_bad_sample == "skip" and execution.is_main_process:
        report_skipped_samples(Path(run_dir), result.skipped_samples)
    return result
