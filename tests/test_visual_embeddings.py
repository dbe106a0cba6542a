"""bench/visual_class_embeddings.py: each class's row is the trunk's mean feature over its
labelled pixels, centred over the classes, unit length, in label-id order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cagnet.class_embeddings import load_class_embeddings

from conftest import tiny_config_overrides

REPOSITORY = Path(__file__).resolve().parents[1]
FACTORY = Path(__file__).resolve().parent / "trunk_factory.py"


@pytest.fixture
def visual(monkeypatch):
    monkeypatch.syspath_prepend(str(REPOSITORY / "bench"))
    import visual_class_embeddings
    return visual_class_embeddings


def test_class_sums_follow_the_labels_on_the_feature_grid(visual) -> None:
    # The "trunk" halves the resolution and keeps the image, whose channel 0 holds the label
    # plus 10: class k's mean feature in channel 0 is k + 10.
    label = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])
    image = torch.stack([label.float() + 10, torch.ones(4, 4), torch.zeros(4, 4)])
    dataset = [{"image": image, "label": label}, {"image": image, "label": label}]
    sums, counts = visual.class_feature_sums(nn.AvgPool2d(2), dataset, num_classes=4)
    assert counts.tolist() == [2, 2, 2, 0]
    assert (sums[:3, 0] / counts[:3]).tolist() == [10, 11, 12]
    assert (sums[:3, 1] / counts[:3]).tolist() == [1, 1, 1]


def test_rows_are_centred_and_unit_length(visual) -> None:
    rows = visual.centred_unit_rows(np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 8.0]]))
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0)
    np.testing.assert_allclose(rows[0], [-np.sqrt(0.5), -np.sqrt(0.5)])  # (-1, -1) scaled


def test_command_writes_one_row_per_label_id(visual, tiny_voc: Path, tmp_path: Path,
                                             capsys) -> None:
    overrides = tiny_config_overrides(tiny_voc) + [f"model.trunk=python:{FACTORY}:tiny_trunk",
                                                   "eval.warp_size=48"]
    out, recipe = tmp_path / "visual.npy", tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    visual.main(["--config", str(recipe), *[a for item in overrides for a in ("--set", item)],
                 "--out", str(out)])
    names = (tiny_voc / "class_names.txt").read_text().splitlines()
    # one unit row per class id, background included: a matrix training can load as it is
    matrix, sidecar = load_class_embeddings(out, class_names=names)
    assert matrix.shape == (len(names), 16)  # the tiny trunk's 16 channels
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    assert sidecar["class_names"] == names and min(sidecar["feature_pixels"]) > 0
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not deeplabv2_resnet101"):
        visual.main(["--config", str(recipe), "--set", f"data.root={tiny_voc}",
                     "--out", str(tmp_path / "deeplab.npy")])
