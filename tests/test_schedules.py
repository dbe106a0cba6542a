"""Learning-rate schedules and the mixed alternation are pure functions of the iteration."""

from __future__ import annotations

import pytest

from cagnet.config import load_config
from cagnet.engine.optim import learning_rates
from cagnet.engine.schedules import is_step2_iteration, poly_lr, step_decay
from cagnet.engine.trainer import step1_iterations_before

from conftest import REPOSITORY


def test_poly_refreshes_every_ten_iterations():
    assert poly_lr(1.0, 0, 100) == 1.0
    assert poly_lr(1.0, 9, 100) == 1.0
    assert poly_lr(1.0, 10, 100) == pytest.approx(0.9 ** 0.9)
    assert poly_lr(2.5e-4, 20000, 40000) == pytest.approx(2.5e-4 * 0.5 ** 0.9)
    assert poly_lr(1.0, 100, 100) == 0.0


def test_step_decay_matches_the_original_lambda():
    assert step_decay(9999, 10000, 5000, 0.71) == 1.0
    assert step_decay(10000, 10000, 5000, 0.71) == pytest.approx(0.71)
    assert step_decay(14999, 10000, 5000, 0.71) == pytest.approx(0.71)
    assert step_decay(15000, 10000, 5000, 0.71) == pytest.approx(0.71 ** 2)


def test_mixed_schedule_starts_with_step1():
    flags = [is_step2_iteration(t, "finetune", 100) for t in (0, 99, 100, 199, 200, 350)]
    assert flags == [False, False, True, True, False, True]
    assert not any(is_step2_iteration(t, "step1", 100) for t in range(0, 1000, 50))
    assert step1_iterations_before(0, "finetune", 100) == 0
    assert step1_iterations_before(150, "finetune", 100) == 100
    assert step1_iterations_before(250, "finetune", 100) == 150
    assert step1_iterations_before(77, "step1", 100) == 77


def test_learning_rates_of_the_voc_finetune_recipe():
    config = load_config(REPOSITORY / "experiments" / "voc12_finetune.yaml")
    rates = learning_rates(3500, config.train.iterations, config.optim)
    assert rates["discriminator"] == pytest.approx(5e-5 * 0.1)
    assert rates["generator"] == pytest.approx(5e-5 * 0.1)
