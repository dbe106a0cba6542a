"""Tests of `cagnet.report`: class rows, Markdown, metrics.json and the log line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cagnet.config import EvalConfig
from cagnet.engine.evaluate import confusion_matrices
from cagnet.metrics import zero_shot_scores
from cagnet.report.tables import (class_rows, format_scores_line, markdown_report, metrics_document,
                           write_report)

CLASS_NAMES = ["cat", "dog", "sheep", "sofa"]
PROTOCOL = {"dataset": "synthetic", "label resolution": "original", "checkpoint": "final.pt"}


@pytest.fixture()
def scores() -> dict:
    # IoU: 2/3, 0, 3/5, NaN (sofa never occurs); seen = cat, dog; unseen = sheep, sofa.
    confusion = np.array([[2, 0, 1, 0], [0, 0, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]])
    return zero_shot_scores(confusion, seen=[0, 1], unseen=[2, 3])


def test_class_rows(scores: dict) -> None:
    rows = class_rows(scores, CLASS_NAMES, num_seen=2)
    assert [row["name"] for row in rows] == CLASS_NAMES
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert [row["split"] for row in rows] == ["seen", "seen", "unseen", "unseen"]
    assert rows[0]["iou"] == pytest.approx(2 / 3)
    assert rows[2]["accuracy"] == pytest.approx(3 / 4)
    assert math.isnan(rows[3]["iou"])
    with pytest.raises(ValueError, match="3 class names"):
        class_rows(scores, CLASS_NAMES[:3], num_seen=2)


def test_markdown_report(scores: dict) -> None:
    text = markdown_report(scores, CLASS_NAMES, 2, PROTOCOL, title="VOC test")
    assert text.startswith("# VOC test\n")
    assert "| hIoU | mIoU | S-mIoU | U-mIoU | pixel acc | mean acc |" in text
    assert "| 0.4286 | 0.4222 | 0.3333 | 0.6000 | 0.7143 | 0.7083 |" in text
    assert "- label resolution: original" in text
    assert "| 0 | cat | seen | 0.6667 | 0.6667 |" in text
    assert "| 1 | dog | seen | 0.0000 | — |" in text
    assert "| 3 | sofa | unseen | — | — |" in text
    assert "nan" not in text.lower()


def test_metrics_document_and_write_report(tmp_path, scores: dict) -> None:
    document = metrics_document(scores, CLASS_NAMES, 2, PROTOCOL)
    assert set(scores) <= set(document)
    assert document["protocol"] == PROTOCOL and len(document["classes"]) == 4

    metrics_path, report_path = write_report(tmp_path / "eval", scores, CLASS_NAMES, 2, PROTOCOL,
                                             title="VOC test")
    assert metrics_path == tmp_path / "eval" / "metrics.json"
    assert report_path == tmp_path / "eval" / "report.md"
    text = metrics_path.read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["iou"][3] is None and loaded["classes"][3]["iou"] is None
    assert loaded["hiou"] == pytest.approx(3 / 7)
    assert loaded["classes"][2] == {"name": "sheep", "index": 2, "split": "unseen",
                                    "iou": pytest.approx(0.6), "accuracy": pytest.approx(0.75)}
    assert report_path.read_text().startswith("# VOC test")
    assert [path.name for path in sorted((tmp_path / "eval").iterdir())] == \
        ["metrics.json", "report.md"]  # no temporary files left behind


def test_format_scores_line(scores: dict) -> None:
    assert format_scores_line(scores) == "hIoU 0.4286 | mIoU 0.4222 | seen 0.3333 | unseen 0.6000"
    assert format_scores_line({"hiou": math.nan, "miou": 0.5, "miou_seen": 0.5,
                               "miou_unseen": math.nan}) == \
        "hIoU — | mIoU 0.5000 | seen 0.5000 | unseen —"


def test_report_names_both_protocols_and_keeps_the_threshold_apart(tmp_path, scores: dict):
    other = zero_shot_scores(np.array([[3, 0, 0, 0], [0, 1, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]]),
                             seen=[0, 1], unseen=[2, 3])
    both = {**scores, "protocols": {"full": scores, "original": other}}
    open_world = {**scores, "min_confidence": 0.5, "protocol": "full", "coverage": 0.75}
    write_report(tmp_path, both, CLASS_NAMES, 2, {"protocol": "full"}, "VOC", open_world)
    text = (tmp_path / "report.md").read_text()
    assert "| protocol | hIoU | mIoU | S-mIoU | U-mIoU | pixel acc | mean acc |" in text
    assert "| full (primary) | 0.4286 | 0.4222 |" in text
    assert "| original | 1.0000 | 1.0000 |" in text
    block = text.split("## Open-world threshold (not a benchmark score)")[1]
    assert "below 0.5" in block and "0.7500 of the pixels" in block
    assert "| min confidence 0.5 | 0.4286 |" in block
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert document["hiou"] == pytest.approx(3 / 7) and "coverage" not in document
    assert document["protocols"]["original"]["hiou"] == 1.0


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits (K, 1, 4) are fixed: one row of four pixels."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        return tuple(self.logits.shape[-2:])

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(images), *self.logits.shape)


@pytest.mark.parametrize("protocol", ["original", "full"])
def test_unseen_only_scores_predict_unseen_pixels_among_unseen_classes(protocol: str) -> None:
    """Classes cat, dog seen; sheep, sofa unseen. Pixel 0 (sheep) is predicted dog overall but
    sheep among the unseen; pixel 1 (sofa) sheep either way; seen pixels never count. `full`
    upsamples the logits (masking seen logits with -inf there made NaNs)."""
    logits = torch.tensor([[0.0, 0.0, 9.0, 0.0],     # cat
                           [9.0, 0.0, 0.0, 9.0],     # dog
                           [5.0, 5.0, 0.0, 0.0],     # sheep
                           [1.0, 1.0, 0.0, 0.0]]).view(4, 1, 4)  # sofa
    batch = {"image": torch.zeros(1, 3, 1, 4), "label": torch.tensor([[[2, 3, 0, 1]]])}
    evaluation = EvalConfig(protocol=protocol, warp_size=4)
    matrices = confusion_matrices(FixedLogits(logits), [batch], 4, evaluation,
                                  torch.device("cpu"), reduce=None, num_seen=2)
    assert matrices[protocol][2].tolist() == [0, 1, 0, 0]  # sheep -> dog overall
    unseen_only = matrices["unseen_only"]
    assert unseen_only[:2].sum() == 0 and unseen_only[:, :2].sum() == 0
    assert unseen_only[2:, 2:].tolist() == [[1, 0], [1, 0]]
    assert "unseen_only" not in confusion_matrices(FixedLogits(logits), [batch], 4, evaluation,
                                                   torch.device("cpu"), reduce=None, num_seen=4)


def test_report_states_the_unseen_only_scores(scores: dict) -> None:
    text = markdown_report({**scores, "zsl_miou": 0.25, "zsl_mean_acc": 0.5,
                            "zsl_iou": [0.5, 0.0]}, CLASS_NAMES, 2, PROTOCOL, "t")
    assert "## Unseen classes only (ZSL setting)" in text
    assert "(chance accuracy 0.50): mIoU 0.2500, mean accuracy 0.5000" in text
    assert "IoU per class: sheep 0.5000, sofa 0.0000." in text
    assert "Unseen classes only" not in markdown_report(scores, CLASS_NAMES, 2, PROTOCOL, "t")


def test_curve_chart_widens_until_every_legend_name_fits() -> None:
    from cagnet.report.curves import BACKGROUND, HEIGHT, WIDTH, curve_chart
    short = curve_chart([0, 1], {"a": [0.2, 0.4]}, "title")
    assert short.shape == (HEIGHT, WIDTH, 3)
    name = "CaGNet extension, network trained, a long method name"
    wide = curve_chart([0, 1], {name: [0.2, 0.4]}, "title")
    assert wide.shape[1] > WIDTH
    # the name ends before the right edge: the last 4 columns are background only
    assert (wide[:, -4:] == np.array(BACKGROUND, np.uint8)).all()
    assert not (wide[:, WIDTH - 10:] == np.array(BACKGROUND, np.uint8)).all()
