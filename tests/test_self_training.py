"""Self-training: the top-p and top-p % rules on hand-made logits, the pseudo-label folder and
its dataset lookup (the default protocol untouched), and the zero-embedding switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cagnet.baselines.pseudo_labels import top_p_rule, top_percent_rule, write_pseudo_labels
from cagnet.baselines.self_training import train_self_training, zero_unseen_conditions
from cagnet.datasets.build import build_benchmark, build_dataset
from cagnet.models.build import build_cagnet
from cagnet.config import load_config
from cagnet.datasets.images import read_label
from cagnet.engine.trainer import train
from conftest import tiny_config_overrides

S = 2  # classes 0, 1 seen; 2, 3 unseen


def _logits(rankings: list[list[int]]) -> torch.Tensor:
    """(1, 4, 1, N) logits whose per-pixel class ranking (best first) is given."""
    logits = torch.zeros(1, 4, 1, len(rankings))
    for pixel, ranking in enumerate(rankings):
        for rank, class_index in enumerate(ranking):
            logits[0, class_index, 0, pixel] = 10.0 - rank
    return logits


def test_top_p_rule() -> None:
    logits = _logits([[1, 3, 2, 0], [2, 0, 1, 3], [0, 1, 3, 2], [3, 2, 0, 1], [2, 3, 0, 1]])
    labels = torch.tensor([[[255, 255, 255, 255, 0]]])  # the last pixel is labelled seen
    assert top_p_rule(logits, labels, S, 1).tolist() == [[[255, 2, 255, 3, 0]]]
    assert top_p_rule(logits, labels, S, 2).tolist() == [[[3, 2, 255, 3, 0]]]
    assert top_p_rule(logits, labels, S, 3).tolist() == [[[3, 2, 3, 3, 0]]]
    assert top_p_rule(logits, labels, S, 10).tolist() == [[[3, 2, 3, 3, 0]]]


def test_top_percent_rule_is_per_image() -> None:
    # Image 0: four ignored pixels predicted unseen with confidences falling left to right,
    # one ignored pixel predicted seen, one seen-labelled pixel predicted unseen.
    logits = torch.full((2, 4, 1, 6), -5.0)
    for pixel, (class_index, value) in enumerate([(2, 4.0), (3, 3.0), (2, 2.0), (3, 1.0),
                                                  (0, 5.0), (2, 9.0)]):
        logits[0, class_index, 0, pixel] = value
    logits[1] = logits[0].flip(-1)  # image 1: the mirrored layout
    labels = torch.tensor([[[255, 255, 255, 255, 255, 1]], [[1, 255, 255, 255, 255, 255]]])
    half = top_percent_rule(logits, labels, S, 50.0)
    assert half[0].tolist() == [[2, 3, 255, 255, 255, 1]]
    assert half[1].tolist() == [[1, 255, 255, 255, 3, 2]]
    assert top_percent_rule(logits, labels, S, 25.0)[0].tolist() == [[2, 255, 255, 255, 255, 1]]
    assert top_percent_rule(logits, labels, S, 100.0)[0].tolist() == [[2, 3, 2, 3, 255, 1]]


def _everything_unseen(logits, labels, num_seen):
    """A rule that pseudo-labels every ignored pixel with the first unseen class."""
    return torch.where(labels == 255, torch.full_like(labels, num_seen), labels)


def _pseudo_labelled(tiny_voc: Path, tmp_path: Path) -> tuple[list[str], Path, Path]:
    overrides = tiny_config_overrides(tiny_voc)
    step1 = train(load_config(None, overrides), tmp_path / "step1", show_progress=False)
    config = load_config(None, overrides)
    benchmark = build_benchmark(config)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    summary = write_pseudo_labels(model, config, benchmark.split, _everything_unseen,
                                  tmp_path / "pseudo", torch.device("cpu"))
    assert summary["total_pseudo_labelled_pixels"] > 0
    # Every ignored pixel became 'blue square': its own objects, background and void - never
    # another object (seen pixels keep their labels).
    where = summary["diagnostics"]["blue square"]
    assert where["on_its_own_objects"] > 0 and where["on_background_or_void"] > 0
    assert where["on_other_objects"] == 0 and where["object_precision"] == 1.0
    return overrides, tmp_path / "pseudo", step1.checkpoint


def test_pseudo_label_folder_and_lookup(tiny_voc: Path, tmp_path: Path) -> None:
    overrides, pseudo, _ = _pseudo_labelled(tiny_voc, tmp_path)
    mask = read_label(tiny_voc / "SegmentationClass" / "img_000.png")
    written = read_label(pseudo / "img_000.png")
    # Seen pixels keep their dataset id; every other pixel became the unseen class 'blue
    # square' (id 4) - including the TRUE unseen pixels only because this rule labels every
    # ignored pixel: the values come from the rule, never from the mask.
    seen = np.isin(mask, [1, 2, 3])
    assert np.array_equal(written[seen], mask[seen]) and set(np.unique(written[~seen])) == {4}
    split = build_benchmark(load_config(None, overrides)).split
    plain = build_dataset(load_config(None, overrides).data, split, 0)
    with_pseudo = build_dataset(load_config(None, overrides + [
        f"data.pseudo_label_dir={pseudo}"]).data, split, 0)
    plain_values = set(plain[(0, 0)]["label"].unique().tolist())
    assert plain_values <= {0, 1, 2, 255}  # default protocol: no unseen label, ever
    assert 3 in set(with_pseudo[(0, 0)]["label"].unique().tolist())  # unseen index S = 3


@pytest.mark.parametrize("zero", [True, False])
def test_zero_embedding_switch(tiny_voc: Path, tmp_path: Path, zero: bool,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from cagnet.models import CaGNet

    overrides, pseudo, step1 = _pseudo_labelled(tiny_voc, tmp_path)
    config = load_config(None, overrides + [
        f"data.pseudo_label_dir={pseudo}", "train.stage=finetune", "train.mixed_period=1",
        "train.iterations=2", f"self_training.zero_embedding_for_pseudo_labels={zero}",
        "self_training.labelling=offline"])
    from cagnet.engine import steps

    calls: list = []  # (labels, generator condition) of every generation: step 1, then step 2
    step1_generate, step2_generate = CaGNet.generate, steps._generate

    def recording(self, labels, latent):
        calls.append((labels.clone(), self.condition(labels).clone()))
        return step1_generate(self, labels, latent)

    def recording_step2(model, labels, latent):  # step 2 generates without CaGNet.generate
        calls.append((labels.clone(), model.condition(labels).clone()))
        return step2_generate(model, labels, latent)

    monkeypatch.setattr(CaGNet, "generate", recording)
    monkeypatch.setattr(steps, "_generate", recording_step2)
    train_self_training(config, tmp_path / "st", step1, show_progress=False)
    (step1_labels, step1_condition), (step2_labels, step2_condition) = calls
    pseudo_pixels = (step1_labels == 3).unsqueeze(1).expand_as(step1_condition)
    assert pseudo_pixels.any()
    assert (step1_condition[pseudo_pixels] == 0).all() == zero
    seen_pixels = (step1_labels < 3).unsqueeze(1).expand_as(step1_condition)
    assert step1_condition[seen_pixels].abs().sum() > 0
    unseen_step2 = (step2_labels == 3).unsqueeze(1).expand_as(step2_condition)
    assert step2_condition[unseen_step2].abs().sum() > 0  # step 2 keeps real embeddings


def test_zero_unseen_conditions_restores_the_embeddings(tiny_voc: Path) -> None:
    config = load_config(None, tiny_config_overrides(tiny_voc))
    benchmark = build_benchmark(config)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    before = model.class_embeddings.clone()
    labels = torch.tensor([[[0, 3], [2, 255]]])
    with zero_unseen_conditions(model):
        condition = model.condition(labels)
        assert (condition[0, :, 0, 1] == 0).all() and condition[0, :, 0, 0].abs().sum() > 0
    assert torch.equal(model.class_embeddings, before)
    assert model.condition(labels)[0, :, 0, 1].abs().sum() > 0
