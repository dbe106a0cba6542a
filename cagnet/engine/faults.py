"""Faults during training: the non-finite loss policy, and clean errors from loader workers.

Non-finite losses (`train.on_nonfinite`, method-independent): a step whose loss is NaN or Inf
makes no update (the step functions skip it) and is logged with a warning. After
`train.max_nonfinite_steps` such steps in a row:

- `stop` (the default): raise `TrainingError` naming the iteration and the last checkpoint. A
  rollback changes the learning-rate schedule, so the run would no longer be the recipe's
  experiment: that has to be asked for.
- `rollback`: reload the newest checkpoint written outside a non-finite streak, multiply every
  learning rate by `train.rollback_lr_factor` from then on, and continue; at most
  `train.max_rollbacks` times, then stop as above. Every random draw is a function of the
  iteration, so retrying at the same rate would only repeat the same failure.

DataLoader workers: torch re-raises a worker's exception as the same type with the worker's
whole traceback as its message; `unwrap_worker_error` recovers the original one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from cagnet.errors import CagnetError


@dataclass
class NonFiniteMonitor:
    """Counts non-finite steps in a row and decides what happens next.

    `observe` returns "ok" (finite step), "skip" (non-finite, keep going), "rollback" or "stop".
    The counters are saved in checkpoints (`state_dict`), so a resumed run decides identically.
    """

    mode: str
    max_steps: int
    lr_factor: float
    max_rollbacks: int
    streak: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0

    def observe(self, skipped: bool) -> str:
        self.streak = self.streak + 1 if skipped else 0
        if not self.streak:
            return "ok"
        if self.streak < self.max_steps:
            return "skip"
        if self.mode == "rollback" and self.rollbacks < self.max_rollbacks:
            return "rollback"
        return "stop"

    def record_rollback(self) -> None:
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        self.streak = 0

    def state_dict(self) -> dict:
        return {"streak": self.streak, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("streak", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))

    def stop_message(self, iteration: int, checkpoint: str) -> str:
        text = (f"{self.streak} non-finite losses in a row (train.max_nonfinite_steps = "
                f"{self.max_steps}) at iteration {iteration}")
        if self.mode == "rollback":
            text += (f", after {self.rollbacks} rollback(s) (train.max_rollbacks = "
                     f"{self.max_rollbacks}, learning rates x{self.lr_scale:g})")
        return (text + ": lower the learning rates, set train.on_nonfinite=rollback, or check "
                f"the data; last checkpoint: {checkpoint}")


def scale_learning_rates(optimizers: dict[str, torch.optim.Optimizer], rates: dict[str, float],
                         scale: float) -> dict[str, float]:
    """Multiply every group's learning rate (already set for this iteration) by `scale`;
    returns the scaled base rates for logging."""
    if scale == 1.0:
        return rates
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] *= scale
    return {name: rate * scale for name, rate in rates.items()}


def unwrap_worker_error(error: CagnetError) -> CagnetError:
    """The error a DataLoader worker raised, with its own message instead of torch's
    "Caught DataError in DataLoader worker process 0. Original Traceback ..." text."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return error
    marker = f"{type(error).__module__}.{type(error).__qualname__}: "
    _, found, message = text.rpartition(marker)
    if not found:
        message = text.splitlines()[0]
    return type(error)(message.strip())


class CleanWorkerErrors:
    """Wrap a DataLoader so that errors raised in its workers surface with their own message."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator:
        try:
            yield from self.loader
        except CagnetError as error:
            raise unwrap_worker_error(error) from None

    def __bool__(self) -> bool:
        return True
