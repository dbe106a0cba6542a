"""Learning-rate schedules and the step-1 / step-2 alternation, pure functions of the iteration."""

import math


def poly_lr(base_lr: float, iteration: int, total_iterations: int, power: float = 0.9,
            refresh: int = 10) -> float:
    """Poly decay `base * (1 - t / T) ** power`, t rounded down to a multiple of `refresh`."""
    if total_iterations <= 0:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    return base_lr * max(0.0, 1.0 - (iteration // refresh) * refresh / total_iterations) ** power


def warmup_cosine_lr(base_lr: float, iteration: int, total_iterations: int) -> float:
    """Linear warm-up over the first 5 % of the run, then cosine decay to 0 (pretraining)."""
    warmup = min(1.0, (iteration + 1) / max(1, total_iterations // 20))
    return base_lr * warmup * 0.5 * (1 + math.cos(math.pi * iteration / total_iterations))


def step_decay(iteration: int, start: int, step: int, gamma: float) -> float:
    """Multiplicative factor: 1 before `start`, then gamma ** ((t - start) // step + 1)."""
    return 1.0 if iteration < start else gamma ** ((iteration - start) // step + 1)


def is_step2_iteration(iteration: int, stage: str, period: int) -> bool:
    """Finetune: `period` step-1 iterations, then `period` step-2 ones, and so on."""
    return stage == "finetune" and (iteration // period) % 2 == 1


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of every random draw in one iteration, so a resumed run draws the same."""
    return (seed * 1_000_003 + iteration * 7_919 + 12_345) % (2 ** 63 - 1)
