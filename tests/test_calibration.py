"""Calibrated stacking: T is subtracted from seen classes only, T is chosen on the validation
classes (never on the test unseen classes), the sweep agrees with the evaluator, the
validation split and the `cagnet calibrate` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cagnet.baselines.calibration import (SweepTarget, calibrated_scores,
                                          parse_values, pick_temperature, validation_split)
from cagnet.baselines.calibration_run import calibrate, check_validation_model
from cagnet.datasets.splits import ClassSplit, read_class_names, read_split
from cagnet.engine.evaluate import evaluate
from cagnet.errors import CheckpointError, ConfigError, DataError
from conftest import REPOSITORY, tiny_config_overrides


class LogitsAsImages(nn.Module):
    """A 'model' whose input already is its logits: segment(x) = x."""

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return images


def _target(probabilities: list[list[float]], truth: list[int], num_seen: int) -> SweepTarget:
    """One image of len(truth) x 1 pixels with the given class probabilities."""
    logits = torch.log(torch.tensor(probabilities) + 1e-12).t()[None, :, :, None]  # (1, K, N, 1)
    labels = torch.tensor(truth)[:, None]
    loader = [{"image": logits, "label": labels[None]}]
    return SweepTarget(LogitsAsImages(), loader, num_seen, len(probabilities[0]), "original",
                       len(truth), torch.device("cpu"))


def test_calibration_subtracts_t_from_seen_classes_only() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])[:, :, None, None]  # (1, 4, 1, 1)
    probabilities = torch.softmax(logits, dim=1)
    scores = calibrated_scores(logits, num_seen=2, temperature=0.3)
    assert torch.allclose(scores[:, :2], probabilities[:, :2] - 0.3)
    assert torch.allclose(scores[:, 2:], probabilities[:, 2:])
    assert torch.allclose(calibrated_scores(logits, 2, 0.0), probabilities)


def test_t_is_picked_on_the_validation_classes_not_on_the_test_unseen_classes() -> None:
    # Classes 0, 1 seen, 2 plays the unseen class. Validation: everything right only for
    # T in (0.3, 0.4), i.e. T = 0.35 on the grid. Test: only for T in (0.7, 0.8).
    validation = _target([[0.7, 0.0, 0.3], [0.6, 0.1, 0.3], [0.1, 0.9, 0.0]], [0, 2, 1], 2)
    test = _target([[0.9, 0.0, 0.1], [0.85, 0.0, 0.15], [0.05, 0.95, 0.0]], [0, 2, 1], 2)
    values = parse_values("0:1:0.05")
    result = calibrate(test, values, validation=validation, validation_classes=["val"])
    assert result.temperature == pytest.approx(0.35)
    assert pick_temperature(result.validation_curve) == pytest.approx(0.35)
    assert pick_temperature(result.test_curve) == pytest.approx(0.75)  # would be the cheat
    assert result.test_scores["miou_unseen"] == 0.0  # the honest price of the validation T
    best_test = max(row["hiou"] for row in result.test_curve)
    assert best_test == 1.0 and result.test_scores["hiou"] < best_test
    assert "validation classes val" in result.chosen_on


def test_a_given_t_is_applied_and_recorded_as_given() -> None:
    test = _target([[0.9, 0.0, 0.1], [0.85, 0.0, 0.15], [0.05, 0.95, 0.0]], [0, 2, 1], 2)
    result = calibrate(test, [0.0, 0.5], temperature=0.75)
    assert result.temperature == 0.75 and result.chosen_on.startswith("given")
    assert result.test_scores["hiou"] == 1.0
    with pytest.raises(ConfigError):
        calibrate(test, [0.0], temperature=0.5, validation=test)


@pytest.mark.parametrize("protocol", ["full", "original"])
def test_sweep_at_t_zero_is_the_uncalibrated_evaluation(protocol: str) -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 5, 6, 6)
    labels = torch.randint(0, 5, (2, 12, 12))
    labels[:, :2] = 255
    loader = [{"image": images, "label": labels}]
    target = SweepTarget(LogitsAsImages(), loader, 3, 5, protocol, 12, torch.device("cpu"))
    from cagnet.baselines.calibration import sweep_confusions

    confusions = sweep_confusions(target, [0.0, 0.3])
    expected = evaluate(LogitsAsImages(), loader, 5, protocol, 12, torch.device("cpu"),
                        reduce=None)
    assert torch.equal(confusions[0], expected)
    # T = 0.3 moves predictions from seen to unseen classes only.
    moved = confusions[1].sum(0) - confusions[0].sum(0)
    assert (moved[:3] <= 0).all() and (moved[3:] >= 0).all() and moved.abs().sum() > 0


def test_ties_pick_the_smallest_t_and_nan_loses() -> None:
    curve = [{"temperature": 0.0, "hiou": math.nan}, {"temperature": 0.1, "hiou": 0.5},
             {"temperature": 0.2, "hiou": 0.5}]
    assert pick_temperature(curve) == 0.1


def test_parse_values() -> None:
    assert parse_values("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("0:1:0.05")[-1] == 1.0 and len(parse_values("0:1:0.05")) == 21
    assert parse_values("0.6, 0.2") == [0.2, 0.6]
    for bad in ("1:0:0.1", "0:1:0", "a:b:c", ""):
        with pytest.raises(ConfigError):
            parse_values(bad)


def test_validation_split_holds_out_the_validation_classes() -> None:
    split = ClassSplit(("bg", "a", "b", "c", "d", "e"), (1, 2, 3), (4, 5), (2,))
    held_out = validation_split(split)
    assert held_out.seen_ids == (1, 3) and held_out.unseen_ids == (2,)
    assert held_out.train_lookup()[4] == 255 and held_out.test_lookup()[4] == 255
    with pytest.raises(DataError):
        validation_split(ClassSplit(("bg", "a", "b"), (1,), (2,)))


def test_a_validation_model_holding_out_test_unseen_classes_is_refused() -> None:
    names = ("bg", "a", "b", "c", "d")

    def loaded(seen, unseen):
        return ClassSplit(names, seen, unseen)

    real = loaded((1, 2, 3), (4,))
    assert check_validation_model(real, loaded((1, 3), (2,)), "v.pt") == ["b"]
    with pytest.raises(CheckpointError):
        check_validation_model(real, loaded((1, 2, 3), (4,)), "v.pt")  # picks on test unseen


def test_shapes_validation_split_matches_the_benchmark() -> None:
    from cagnet.datasets.shapes import class_names, seen_unseen_split

    path = REPOSITORY / "data" / "shapes" / "split_validation.yaml"
    split = read_split(path, class_names())
    seen, unseen = seen_unseen_split()
    assert split.model_class_names == seen + unseen
    assert len(split.validation_ids) == 2 and set(split.validation_ids) <= set(split.seen_ids)


def test_calibrate_command_end_to_end(tiny_voc: Path, tmp_path: Path) -> None:
    from cagnet.baselines.spnet import train_spnet
    from cagnet.cli import main
    from cagnet.config import load_config

    (tiny_voc / "split.yaml").write_text("seen: [red circle, blue circle, red square]\n"
                                         "unseen: [blue square]\nvalidation: [blue circle]\n")
    held_out = validation_split(read_split(tiny_voc / "split.yaml",
                                           read_class_names(tiny_voc / "class_names.txt")))
    (tmp_path / "validation.yaml").write_text(yaml.safe_dump(
        {"seen": [held_out.class_names[i] for i in held_out.seen_ids],
         "unseen": [held_out.class_names[i] for i in held_out.unseen_ids]}))
    overrides = tiny_config_overrides(tiny_voc) + ["baseline.method=spnet"]
    real = train_spnet(load_config(None, overrides), tmp_path / "real", show_progress=False)
    validation = train_spnet(load_config(None, overrides + [
        f"data.split={tmp_path / 'validation.yaml'}"]), tmp_path / "val", show_progress=False)
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--checkpoint", str(real.checkpoint), "--validation-checkpoint",
                 str(validation.checkpoint), "--values", "0:1:0.5", "--output-dir",
                 str(out)]) == 0
    document = json.loads((out / "calibration.json").read_text())
    assert document["validation_classes"] == ["blue circle"]
    assert [row["temperature"] for row in document["validation_curve"]] == [0.0, 0.5, 1.0]
    assert (out / "calibration.png").stat().st_size > 1000
    assert "calibration" in json.loads((out / "metrics.json").read_text())["protocol"]
    # The real model cannot be its own validation model: the classes it holds out are the
    # test unseen classes, on which T must never be chosen.
    assert main(["calibrate", "--checkpoint", str(real.checkpoint), "--validation-checkpoint",
                 str(real.checkpoint), "--output-dir", str(tmp_path / "bad")]) == 2
