"""SPNet and ZS3Net: hand-computed projections, seen-only training, GMMN shapes and MMD training,
ZS3Net's classifier batch, and both trainers end to end on the tiny benchmark."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cagnet.baselines.spnet import spnet_loss, train_spnet
from cagnet.baselines.zs3net import (classifier_batch_loss, generated_count, generator_loss,
                                     sample_class_pixels, train_zs3net)
from cagnet.config import load_config
from cagnet.datasets.build import build_benchmark
from cagnet.engine.checkpoint import load_checkpoint, load_model
from cagnet.engine.evaluate import evaluate_checkpoint
from cagnet.engine.trainer import train
from cagnet.models.gmmn import GMMNGenerator
from cagnet.models.spnet import SPNet, projection_logits
from conftest import tiny_config_overrides


class FixedFeatures(nn.Module):
    """A 'backbone' returning a learnable constant map (B, E, h, w), for hand-made examples."""

    def __init__(self, feature: torch.Tensor) -> None:
        super().__init__()
        self.feature = nn.Parameter(feature.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature.expand(images.shape[0], -1, -1, -1)


def test_spnet_logits_are_features_times_normalised_embeddings() -> None:
    # E = 2, K = 3 (2 seen + 1 unseen); the unseen row [3, 4] is normalised to [0.6, 0.8].
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    feature = torch.tensor([[[[2.0]], [[3.0]]]])  # (1, 2, 1, 1): pixel feature (2, 3)
    model = SPNet(FixedFeatures(feature), embeddings, num_seen=2, train_scales=(1.0,))
    logits = model.segment(torch.zeros(1, 3, 8, 8))
    assert logits.shape == (1, 3, 1, 1)
    assert torch.allclose(logits.flatten(), torch.tensor([2.0, 3.0, 0.6 * 2 + 0.8 * 3]))
    assert torch.allclose(model.seen_logits(feature).flatten(), torch.tensor([2.0, 3.0]))
    assert torch.allclose(projection_logits(feature, embeddings[:2]), logits[:, :2])


def test_spnet_training_reads_only_the_seen_rows() -> None:
    torch.manual_seed(0)
    feature = torch.randn(1, 4, 3, 3)
    labels = torch.tensor([[[0, 1, 255], [1, 0, 0], [255, 1, 1]]])
    seen = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    results = []
    for unseen in (torch.randn(2, 4), 10 * torch.randn(2, 4)):
        model = SPNet(FixedFeatures(feature), torch.cat([seen, unseen]), num_seen=2,
                      train_scales=(1.0,))
        loss = spnet_loss(model, model.multi_scale_features(torch.zeros(1, 3, 8, 8)), labels)
        loss.backward()
        results.append((loss.detach(), model.backbone.feature.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    # An unseen label is out of range for the S seen logits: it can never be a silent target.
    model = SPNet(FixedFeatures(feature), torch.cat([seen, unseen]), 2, (1.0,))
    try:
        spnet_loss(model, [feature], torch.full((1, 3, 3), 2))
    except (IndexError, RuntimeError):
        pass
    else:
        raise AssertionError("an unseen label reached SPNet's seen-only loss")


def test_spnet_multi_scale_loss_is_a_sum_over_maps() -> None:
    feature = torch.randn(1, 4, 3, 3)
    model = SPNet(FixedFeatures(feature), torch.randn(3, 4), 2, (1.0, 0.5))
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    maps = model.multi_scale_features(torch.zeros(1, 3, 8, 8))
    assert len(maps) == 3  # two scales and their max
    single = spnet_loss(model, maps[:1], labels)
    assert torch.allclose(spnet_loss(model, maps, labels), 3 * single)  # identical maps here


def test_spnet_trains_end_to_end_and_reloads(tiny_voc, tmp_path) -> None:
    config = load_config(None, tiny_config_overrides(tiny_voc) + ["baseline.method=spnet"])
    result = train_spnet(config, tmp_path / "spnet", show_progress=False)
    assert (tmp_path / "spnet" / "metrics.json").is_file()
    loaded = load_model(result.checkpoint)
    state = load_checkpoint(result.checkpoint)
    assert state["iteration"] == config.train.iterations
    assert isinstance(loaded.model, SPNet)
    # The embedding matrix is a fixed buffer: training never changed it.
    expected = torch.nn.functional.normalize(
        torch.as_tensor(build_benchmark(config).class_embeddings), dim=1)
    assert torch.allclose(loaded.model.class_embeddings, expected)
    logits = loaded.model.segment(torch.zeros(2, 3, 41, 41))
    assert logits.shape[:2] == (2, 4)
    # `cagnet eval` rebuilds an SPNet from the checkpoint and reproduces the training scores.
    scores, _ = evaluate_checkpoint(result.checkpoint, out_dir=tmp_path / "eval")
    assert scores["hiou"] == pytest.approx(result.scores["hiou"])
    assert scores["miou_seen"] == pytest.approx(result.scores["miou_seen"])


def test_gmmn_shapes_and_architecture() -> None:
    generator = GMMNGenerator(embed_dim=4, feature_dim=6, hidden_dim=256, dropout=0.5)
    layers = list(generator.layers)
    assert (layers[0].in_features, layers[0].out_features) == (8, 256)
    assert isinstance(layers[1], nn.LeakyReLU) and layers[1].negative_slope == 0.2
    assert isinstance(layers[2], nn.Dropout) and layers[2].p == 0.5
    assert (layers[3].in_features, layers[3].out_features) == (256, 6)
    assert generator(torch.randn(5, 4), torch.rand(5, 4)).shape == (5, 6)
    assert generator.generate(torch.randn(7, 4), torch.Generator().manual_seed(0)).shape == (7, 6)


def test_mmd_training_moves_generated_features_to_the_real_ones() -> None:
    torch.manual_seed(0)
    embeddings = torch.eye(2, 4)
    real = torch.stack([torch.randn(3, 8, 8) * 0.3 + 4.0, torch.randn(3, 8, 8) * 0.3 - 2.0])
    real[1, :, :, :4] = torch.randn(3, 8, 4) * 0.3 - 2.0
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[1] = 1
    generator = GMMNGenerator(4, 3, hidden_dim=64, dropout=0.0)
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    noise = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(150):
        groups = sample_class_pixels(real, labels, 32, noise)
        loss = generator_loss(generator, embeddings, groups, (2.0, 5.0, 10.0), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]
    fake = generator.generate(embeddings[1].expand(200, -1), noise)
    assert torch.allclose(fake.mean(0), torch.full((3,), -2.0), atol=0.3)


def test_class_pixel_sampling_caps_each_image_and_class() -> None:
    features = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    labels = torch.full((2, 4, 4), 255)
    labels[0, :2] = 0
    labels[0, 2:, :1] = 1
    labels[1] = 1
    groups = sample_class_pixels(features, labels, 5, torch.Generator().manual_seed(0))
    assert [(c, rows.shape[0]) for c, rows in groups] == [(0, 5), (1, 2), (1, 5)]
    assert set(groups[1][1].flatten().tolist()) == {8.0, 12.0}  # exactly that class's pixels


def test_zs3net_classifier_batch_weights_generated_unseen_pixels(tiny_voc) -> None:
    from cagnet.datasets.build import build_benchmark
    from cagnet.models.build import build_cagnet

    config = load_config(None, tiny_config_overrides(tiny_voc))
    benchmark = build_benchmark(config)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    labels = torch.tensor([[[0, 0, 1, 255], [2, 2, 2, 255]]])  # seen classes 0, 1, 2
    assert generated_count(labels, 3, 0) == 2  # 6 seen pixels over 3 classes
    assert generated_count(labels, 3, 7) == 7
    features = torch.rand(1, 4, 2, 4)
    model.eval()
    gmmn = GMMNGenerator(4, 4).eval()  # no dropout: the same rows in every call

    def loss(weight: float) -> torch.Tensor:
        return classifier_batch_loss(model, gmmn, features, labels, 2, weight,
                                     torch.Generator().manual_seed(0))

    # Hand-computed: 6 real rows (weight 1) and 2 generated rows of class 3 (weight w).
    valid = labels != 255
    real_logits = model.discriminator(features.permute(0, 2, 3, 1)[valid]).class_logits
    fake = gmmn.generate(model.class_embeddings[torch.tensor([3, 3])],
                         torch.Generator().manual_seed(0))
    fake_logits = model.discriminator(fake).class_logits
    real_terms = torch.nn.functional.cross_entropy(real_logits, labels[valid], reduction="none")
    fake_terms = torch.nn.functional.cross_entropy(fake_logits, torch.tensor([3, 3]),
                                                   reduction="none")
    expected = (real_terms.sum() + 100 * fake_terms.sum()) / (6 + 200)
    assert torch.allclose(loss(100.0), expected, atol=1e-5)
    pseudo = labels.clone()
    pseudo[0, 0, 3] = 3  # a pseudo-labelled real unseen pixel weighs 1, like every real pixel
    with_pseudo = classifier_batch_loss(model, gmmn, features, pseudo, 2, 100.0,
                                        torch.Generator().manual_seed(0))
    extra = torch.nn.functional.cross_entropy(
        model.discriminator(features[0, :, 0, 3][None]).class_logits, torch.tensor([3]),
        reduction="none")
    rows = torch.cat([real_terms, extra])
    assert torch.allclose(with_pseudo, (rows.sum() + 100 * fake_terms.sum()) / (7 + 200),
                          atol=1e-5)


def test_zs3net_stage_freezes_the_backbone_and_retrains_the_classifier(tiny_voc,
                                                                       tmp_path) -> None:
    overrides = tiny_config_overrides(tiny_voc)
    step1 = train(load_config(None, overrides), tmp_path / "step1", show_progress=False)
    config = load_config(None, overrides + [
        "baseline.method=zs3net", "baseline.zs3net.generator_iterations=2",
        "baseline.zs3net.classifier_iterations=2", "baseline.zs3net.hidden=16"])
    result = train_zs3net(config, tmp_path / "zs3net", step1.checkpoint, show_progress=False)
    before, after = load_checkpoint(step1.checkpoint), load_checkpoint(result.checkpoint)
    assert set(after["extra"]["zs3net_generator"]) == {"layers.0.weight", "layers.0.bias",
                                                       "layers.3.weight", "layers.3.bias"}
    for key, value in before["model"].items():
        if key.startswith(("backbone.", "context.", "generator.")):
            assert torch.equal(value, after["model"][key]), key
    assert not torch.equal(before["model"]["discriminator.classifier.weight"],
                           after["model"]["discriminator.classifier.weight"])
    assert (tmp_path / "zs3net" / "metrics.json").is_file()
