"""Faults in training: the non-finite loss policy (`train.on_nonfinite`), worker errors."""

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from cagnet.errors import CagnetError


@dataclass
class NonFiniteMonitor:
    """Counts non-finite steps in a row; `observe` says "ok", "skip", "rollback" or "stop"."""

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
    """Multiply every group's learning rate by `scale`; returns the scaled base rates."""
    if scale == 1.0:
        return rates
    for optimizer in optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] *= scale
    return {name: rate * scale for name, rate in rates.items()}


def unwrap_worker_error(error: CagnetError) -> CagnetError:
    """A loader worker's error with its own message instead of torch's "Caught ..." traceback."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return error
    _, found, message = text.rpartition(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return type(error)((message if found else text.splitlines()[0]).strip())


class CleanWorkerErrors:
    """Wrap a DataLoader so that errors raised in its workers surface with their own message."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator:
        try:
            yield from self.loader
        except CagnetError as error:
            raise unwrap_worker_error(error) from None
