"""The baselines' training loop: iteration-based and iteration-seeded, like CaGNet's trainer.

`run_iterations` draws the batch of iteration t from `IterationBatchSampler` (a pure function
of (seed, t)), seeds torch's global generator (dropout, latent noise) with
`iteration_seed(seed, t)`, calls `step(t, batch)`, and logs the mean of the returned terms every
`log_interval` iterations into the run's `log.jsonl` / TensorBoard. A run started at iteration t
therefore continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cagnet.datasets.segmentation import IterationBatchSampler, collate_samples
from cagnet.engine.run_state import IntervalStats
from cagnet.engine.schedules import iteration_seed
from cagnet.errors import TrainingError
from cagnet.utils.runtime import RunLog

LOGGER = logging.getLogger("cagnet")
Step = Callable[[int, dict], dict[str, float]]


def training_batches(dataset: Dataset, batch_size: int, seed: int, start_iteration: int,
                     num_workers: int):
    """An endless iterator over the training batches, the first one being `start_iteration`'s."""
    sampler = IterationBatchSampler(len(dataset), batch_size, seed, start_iteration)
    return iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples,
                           num_workers=num_workers, persistent_workers=num_workers > 0))


def run_iterations(step: Step, dataset: Dataset, *, total: int, batch_size: int, seed: int,
                   num_workers: int, log: RunLog, log_interval: int, log_kind: str = "train",
                   start_iteration: int = 0,
                   after_iteration: Callable[[int], None] | None = None,
                   show_progress: bool = True) -> None:
    """Run iterations `start_iteration .. total - 1` of `step`.

    Args:
        step: (iteration, batch) -> named float terms (losses, learning rates) of that update;
            a non-finite term stops the run with a TrainingError naming it.
        dataset: the training dataset (items are `(index, draw)` pairs).
        log: where the interval means go (`log_kind` is the record kind and scalar prefix).
        after_iteration: called with the number of finished iterations (checkpoints).
    """
    if start_iteration >= total:
        return
    batches = training_batches(dataset, batch_size, seed, start_iteration, num_workers)
    stats = IntervalStats()
    progress = tqdm(total=total, initial=start_iteration, disable=not show_progress, unit="it",
                    dynamic_ncols=True, desc=log_kind)
    try:
        for iteration in range(start_iteration, total):
            torch.manual_seed(iteration_seed(seed, iteration))
            terms = step(iteration, next(batches))
            bad = [name for name, value in terms.items() if not math.isfinite(value)]
            if bad:
                raise TrainingError(f"{log_kind} iteration {iteration}: non-finite {bad} "
                                    f"({terms}); lower the learning rate")
            stats.add(terms)
            progress.update(1)
            done = iteration + 1
            if done % log_interval == 0 or done == total:
                record = stats.record({})
                log.write(log_kind, done, record)
                progress.set_postfix({k: f"{v:.3g}" for k, v in list(record.items())[:3]})
            if after_iteration is not None:
                after_iteration(done)
    finally:
        progress.close()
