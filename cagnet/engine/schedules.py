"""Learning-rate schedules and the step-1 / step-2 alternation, as pure functions of the
iteration number, so that resuming needs only the iteration and each can be unit-tested."""

from __future__ import annotations

import math


def poly_lr(base_lr: float, iteration: int, total_iterations: int, power: float = 0.9,
            refresh: int = 10) -> float:
    """DeepLab's poly decay `base * (1 - t / T) ** power`, with t rounded down to a multiple
    of `refresh` (the original refreshes the rate every 10 iterations)."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    step = (iteration // refresh) * refresh
    remaining = max(0.0, 1.0 - step / total_iterations)
    return base_lr * remaining ** power


def warmup_cosine_lr(base_lr: float, iteration: int, total_iterations: int) -> float:
    """Linear warm-up over the first 5 % of the run, then cosine decay to 0 (the image-level
    pretraining schedule)."""
    warmup = min(1.0, (iteration + 1) / max(1, total_iterations // 20))
    return base_lr * warmup * 0.5 * (1 + math.cos(math.pi * iteration / total_iterations))


def step_decay(iteration: int, start: int, step: int, gamma: float) -> float:
    """Multiplicative factor: 1 before `start`, then gamma ** ((t - start) // step + 1)."""
    if iteration < start:
        return 1.0
    return gamma ** ((iteration - start) // step + 1)


def is_step2_iteration(iteration: int, stage: str, period: int) -> bool:
    """In the mixed (finetune) schedule, `period` step-1 iterations come first, then `period`
    step-2 iterations, and so on; plain step-1 training never runs step 2."""
    if stage != "finetune":
        return False
    return (iteration // period) % 2 == 1


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of every random draw made in one iteration (latent noise, dropout, sampled
    labels): resuming at iteration t reproduces exactly what an uninterrupted run draws."""
    return (seed * 1_000_003 + iteration * 7_919 + 12_345) % (2 ** 63 - 1)
