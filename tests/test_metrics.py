"""Golden-value tests of `cagnet.metrics` on hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cagnet.metrics import confusion_matrix, harmonic_mean, zero_shot_scores

# Rows = ground truth, columns = prediction.
CONFUSION_3 = [[5, 1, 0],
               [2, 3, 1],
               [0, 0, 4]]
# class 0: TP 5, GT 6, predicted 7 -> union 8 -> IoU 5/8;  accuracy 5/6
# class 1: TP 3, GT 6, predicted 4 -> union 7 -> IoU 3/7;  accuracy 3/6
# class 2: TP 4, GT 4, predicted 5 -> union 5 -> IoU 4/5;  accuracy 4/4
# seen [0, 1]: S = (5/8 + 3/7) / 2 = 59/112;  unseen [2]: U = 4/5
# hIoU = 2 S U / (S + U) = (472/560) / (743/560) = 472/743
# mIoU = (5/8 + 3/7 + 4/5) / 3 = 519/840;  pixel acc = 12/16;  mean acc = (5/6 + 1/2 + 1) / 3 = 7/9


def test_three_class_golden_values() -> None:
    scores = zero_shot_scores(np.array(CONFUSION_3), seen=[0, 1], unseen=[2])
    assert scores["iou"] == pytest.approx([5 / 8, 3 / 7, 4 / 5])
    assert scores["accuracy"] == pytest.approx([5 / 6, 1 / 2, 1.0])
    assert scores["miou_seen"] == pytest.approx(59 / 112)
    assert scores["miou_unseen"] == pytest.approx(4 / 5)
    assert scores["hiou"] == pytest.approx(472 / 743)
    assert scores["miou"] == pytest.approx(519 / 840)
    assert scores["pixel_acc"] == pytest.approx(0.75)
    assert scores["mean_acc"] == pytest.approx(7 / 9)
    assert scores["num_pixels"] == 16


def test_scores_are_plain_python_values() -> None:
    scores = zero_shot_scores(torch.tensor(CONFUSION_3), seen=[0, 1], unseen=[2])
    for key in ("hiou", "miou", "miou_seen", "miou_unseen", "pixel_acc", "mean_acc"):
        assert type(scores[key]) is float
    assert all(type(value) is float for value in scores["iou"] + scores["accuracy"])
    assert type(scores["num_pixels"]) is int


def test_torch_and_numpy_inputs_agree() -> None:
    from_numpy = zero_shot_scores(np.array(CONFUSION_3, dtype=np.int64), [0, 1], [2])
    from_torch = zero_shot_scores(torch.tensor(CONFUSION_3, dtype=torch.long), [0, 1], [2])
    assert from_numpy == from_torch


# class 1 occurs only as a (wrong) prediction, class 3 never occurs at all.
CONFUSION_4 = [[2, 0, 1, 0],
               [0, 0, 0, 0],
               [0, 1, 3, 0],
               [0, 0, 0, 0]]
# class 0: TP 2, GT 3, predicted 2 -> union 3 -> IoU 2/3; accuracy 2/3
# class 1: TP 0, GT 0, predicted 1 -> union 1 -> IoU 0;   accuracy NaN (no GT pixel)
# class 2: TP 3, GT 4, predicted 4 -> union 5 -> IoU 3/5; accuracy 3/4
# class 3: union 0 -> IoU NaN; accuracy NaN
# seen [0, 1]: S = (2/3 + 0) / 2 = 1/3;  unseen [2, 3]: U = nanmean(3/5, NaN) = 3/5
# hIoU = 2 (1/3)(3/5) / (1/3 + 3/5) = (2/5) / (14/15) = 3/7
# mIoU = nanmean(2/3, 0, 3/5, NaN) = 19/45;  pixel acc = 5/7;  mean acc = (2/3 + 3/4) / 2 = 17/24


def test_empty_union_class_is_nan_and_skipped() -> None:
    scores = zero_shot_scores(np.array(CONFUSION_4), seen=[0, 1], unseen=[2, 3])
    assert scores["iou"][:3] == pytest.approx([2 / 3, 0.0, 3 / 5])
    assert math.isnan(scores["iou"][3])
    assert math.isnan(scores["accuracy"][1]) and math.isnan(scores["accuracy"][3])
    assert scores["miou_seen"] == pytest.approx(1 / 3)
    assert scores["miou_unseen"] == pytest.approx(3 / 5)
    assert scores["hiou"] == pytest.approx(3 / 7)
    assert scores["miou"] == pytest.approx(19 / 45)
    assert scores["pixel_acc"] == pytest.approx(5 / 7)
    assert scores["mean_acc"] == pytest.approx(17 / 24)


def test_hiou_is_zero_when_unseen_iou_is_zero() -> None:
    # class 0: IoU 3/5; class 1 is never predicted right: IoU 0 -> hIoU 0
    scores = zero_shot_scores(np.array([[3, 0], [2, 0]]), seen=[0], unseen=[1])
    assert scores["miou_seen"] == pytest.approx(0.6)
    assert scores["miou_unseen"] == 0.0
    assert scores["hiou"] == 0.0
    # both set means 0: S + U == 0 -> hIoU 0, not NaN
    both_zero = zero_shot_scores(np.array([[0, 1], [1, 0]]), seen=[0], unseen=[1])
    assert both_zero["hiou"] == 0.0


def test_hiou_is_nan_when_a_set_has_no_valid_class() -> None:
    scores = zero_shot_scores(np.array([[4, 0], [0, 0]]), seen=[0], unseen=[1])
    assert scores["miou_seen"] == 1.0
    assert math.isnan(scores["miou_unseen"])
    assert math.isnan(scores["hiou"])
    empty = zero_shot_scores(np.zeros((2, 2)), seen=[0], unseen=[1])
    assert math.isnan(empty["pixel_acc"]) and math.isnan(empty["miou"])
    assert empty["num_pixels"] == 0


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert harmonic_mean(0.2, 0.6) == pytest.approx(0.3)  # 2 * 0.12 / 0.8
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert math.isnan(harmonic_mean(math.nan, 0.4))


def test_invalid_class_sets_are_rejected() -> None:
    with pytest.raises(ValueError, match="both seen and unseen"):
        zero_shot_scores(np.eye(3), seen=[0, 1], unseen=[1, 2])
    with pytest.raises(ValueError, match="outside"):
        zero_shot_scores(np.eye(3), seen=[0], unseen=[3])
    with pytest.raises(ValueError, match="square"):
        zero_shot_scores(np.ones((2, 3)), seen=[0], unseen=[1])


def test_confusion_matrix_with_ignored_pixels() -> None:
    target = torch.tensor([[0, 1, 255, 2],
                           [2, 7, 1, 0]])      # 255 and 7 (out of range) are not counted
    pred = torch.tensor([[0, 2, 1, 2],
                         [1, 0, 1, 0]])
    expected = torch.tensor([[2, 0, 0],          # (0,0) twice
                             [0, 1, 1],          # (1,2), (1,1)
                             [0, 1, 1]])         # (2,2), (2,1)
    matrix = confusion_matrix(pred, target, num_classes=3)
    assert matrix.dtype == torch.long and matrix.device == target.device
    assert torch.equal(matrix, expected)


def test_confusion_matrix_rejects_bad_predictions() -> None:
    target = torch.tensor([0, 1, 255])
    # 255 at an ignored pixel is harmless; 5 at a counted pixel is a bug.
    assert confusion_matrix(torch.tensor([0, 1, 255]), target, 2).sum() == 2
    with pytest.raises(ValueError, match="prediction value 5"):
        confusion_matrix(torch.tensor([0, 5, 0]), target, 2)
    with pytest.raises(ValueError, match="prediction value -1"):
        confusion_matrix(torch.tensor([-1, 0, 0]), target, 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.tensor([0.0, 1.0, 0.0]), target, 2)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), target, 2)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, 255])),
                min_size=0, max_size=40),
       st.integers(0, 40))
def test_confusion_matrix_matches_loop_and_sums_over_shards(pairs: list[tuple[int, int]],
                                                            split: int) -> None:
    pred = torch.tensor([p for p, _ in pairs], dtype=torch.long)
    target = torch.tensor([t for _, t in pairs], dtype=torch.long)
    expected = torch.zeros(4, 4, dtype=torch.long)
    for p, t in pairs:
        if t != 255:
            expected[t, p] += 1
    whole = confusion_matrix(pred, target, 4)
    assert torch.equal(whole, expected)
    # What DDP's all_reduce does: summing per-shard matrices gives the whole-set matrix.
    shards = confusion_matrix(pred[:split], target[:split], 4) + \
        confusion_matrix(pred[split:], target[split:], 4)
    assert torch.equal(shards, whole)
