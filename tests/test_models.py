"""Tests of the CaGNet networks: paper parameter counts, shapes on a tiny configuration, the
analytic feature-grid size, multi-scale outputs, frozen BatchNorm and the model's helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cagnet import losses
from cagnet.errors import ConfigError
from cagnet.models import (CaGNet, ContextualModule, DeepLabV2, Discriminator, FrozenBatchNorm2d,
                           Generator, kaiming_init)

EMBED = 16


def count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def tiny_model(num_classes: int = 5, num_seen: int = 3, extra_logit: bool = True,
               train_scales: tuple[float, ...] = (1.0, 0.5, 0.75)) -> CaGNet:
    torch.manual_seed(0)
    backbone = DeepLabV2(blocks_per_stage=(1, 1, 1, 1), base_width=8, embed_dim=EMBED)
    context = ContextualModule(embed_dim=EMBED, hidden_channels=8)
    generator = Generator(EMBED, EMBED, EMBED, hidden_dims=(24, 20), dropouts=(0.1, 0.5))
    discriminator = Discriminator(EMBED, hidden_dim=32, num_classes=num_classes,
                                  extra_logit=extra_logit)
    embeddings = nn.functional.normalize(torch.randn(num_classes, EMBED), dim=1)
    return CaGNet(backbone, context, generator, discriminator, embeddings, num_seen,
                  train_scales=train_scales)


@pytest.fixture(scope="module")
def paper_networks() -> dict[str, nn.Module]:
    with torch.device("meta"):
        return {"backbone": DeepLabV2(), "context": ContextualModule(),
                "generator": Generator(), "discriminator": Discriminator(num_classes=20)}


def test_paper_parameter_counts(paper_networks: dict[str, nn.Module]) -> None:
    backbone = paper_networks["backbone"]
    trunk = count(backbone) - count(backbone.aspp)
    assert round(trunk / 1e6, 2) == 42.50
    assert count(backbone.aspp) == 44_239_200
    assert count(paper_networks["context"]) == 9_523_584
    assert round((count(backbone) + count(paper_networks["context"])) / 1e6, 2) == 96.26
    assert count(paper_networks["generator"]) == 4_720_088
    assert count(paper_networks["discriminator"]) == 637_974
    assert backbone.trunk_channels == 2048


def test_readable_module_names(paper_networks: dict[str, nn.Module]) -> None:
    keys = set(paper_networks["backbone"].state_dict())
    for key in ("stem.conv.weight", "stem.bn.running_mean", "res2.0.projection.conv.weight",
                "res4.22.conv3x3.bn.weight", "res5.2.increase.conv.weight",
                "aspp.branches.3.bias"):
        assert key in keys
    assert not any("num_batches_tracked" in key for key in keys)
    res4 = paper_networks["backbone"].res4
    assert all(block.conv3x3.conv.dilation == (2, 2) for block in res4)
    assert paper_networks["backbone"].res3[0].reduce.conv.stride == (2, 2)
    assert paper_networks["backbone"].res3[0].conv3x3.conv.stride == (1, 1)


@pytest.mark.parametrize("size", [368, 513, 321, 97, 33, 65, 49, 1])
def test_feature_size_matches_forward(size: int) -> None:
    backbone = DeepLabV2(blocks_per_stage=(1, 1, 1, 1), base_width=4, embed_dim=4,
                         aspp_dilations=(1,))
    with torch.no_grad():
        output = backbone(torch.zeros(1, 3, size, size + 3))
    assert tuple(output.shape[-2:]) == backbone.feature_size(size, size + 3)
    expected = {368: 47, 513: 65, 321: 41}
    if size in expected:
        assert backbone.feature_size(size, size) == (expected[size], expected[size])


@pytest.mark.parametrize("height, width", [(33, 33), (65, 49)])
def test_tiny_shapes(height: int, width: int) -> None:
    model = tiny_model()
    images = torch.randn(2, 3, height, width)
    grid = model.feature_size(height, width)
    assert model.backbone.trunk_channels == 32 * 8
    assert model.backbone.trunk_forward(images).shape == (2, 256) + grid
    output = model.features(images, sample_latent=True)
    for tensor in (output.feature, output.latent, output.latent_mean, output.latent_logvar):
        assert tensor.shape == (2, EMBED) + grid
    assert output.scale_weights.shape == (2, 3) + grid
    assert bool((output.feature >= 0).all() and (output.feature <= 1).all())
    fake = model.generate(torch.zeros(2, *grid, dtype=torch.long), output.latent)
    assert fake.shape == (2, EMBED) + grid
    heads = model.discriminator(fake)
    assert heads.adversarial_logit.shape == (2, 1) + grid
    assert heads.class_logits.shape == (2, 6) + grid


def test_multi_scale_features() -> None:
    model = tiny_model()
    images = torch.randn(1, 3, 65, 49)
    output = model.multi_scale_features(images, sample_latent=False)
    assert len(output.features) == 4
    sizes = [tuple(feature.shape[-2:]) for feature in output.features]
    assert sizes == [model.feature_size(65, 49), model.feature_size(32, 24),
                     model.feature_size(48, 36), model.feature_size(65, 49)]
    assert torch.equal(output.features[0], output.scale1.feature)
    assert bool((output.features[3] >= output.features[0]).all())
    single = tiny_model(train_scales=(1.0,)).multi_scale_features(images, sample_latent=False)
    assert len(single.features) == 1
    with pytest.raises(ConfigError, match="1.0"):
        tiny_model(train_scales=(0.5, 0.75))


def test_latent_sampling_and_quirks() -> None:
    context = ContextualModule(embed_dim=EMBED, hidden_channels=8)
    h = torch.randn(2, EMBED, 5, 5)
    mean_output = context(h, sample_latent=False)
    assert torch.equal(mean_output.latent, mean_output.latent_mean)
    sampled = context(h, sample_latent=True)
    assert not torch.equal(sampled.latent, sampled.latent_mean)
    assert bool((mean_output.latent_logvar >= 0).all())  # ReLU on logvar
    assert bool((mean_output.scale_weights >= 0.5).all())  # ReLU before the sigmoid
    corrected = ContextualModule(EMBED, 8, relu_before_selector=False, relu_on_logvar=False)
    with torch.no_grad():
        corrected.latent_logvar.weight.fill_(-1.0)
    assert bool((corrected(h.abs() + 1, sample_latent=False).latent_logvar < 0).all())


def test_segment_never_exposes_extra_logit() -> None:
    model = tiny_model(num_classes=5, extra_logit=True).eval()
    with torch.no_grad():
        model.discriminator.classifier.bias[-1] = 1e4  # the extra logit would win every argmax
        logits = model.segment(torch.randn(1, 3, 33, 33))
    assert logits.shape == (1, 5) + model.feature_size(33, 33)
    assert int(logits.argmax(1).max()) < 5
    assert torch.equal(model(torch.zeros(1, 3, 33, 33)), model.segment(torch.zeros(1, 3, 33, 33)))
    plain = tiny_model(num_classes=5, extra_logit=False).eval()
    with torch.no_grad():
        assert plain.segment(torch.randn(1, 3, 33, 33)).shape[1] == 5


def test_condition_zero_for_ignored_labels() -> None:
    model = tiny_model(num_classes=5, num_seen=3)
    labels = torch.tensor([[[0, 4], [255, -1]]])
    condition = model.condition(labels)
    assert condition.shape == (1, EMBED, 2, 2)
    assert torch.equal(condition[0, :, 0, 0], model.class_embeddings[0])
    assert torch.equal(condition[0, :, 0, 1], model.class_embeddings[4])
    assert bool((condition[0, :, 1] == 0).all())
    assert model.num_classes == 5 and model.num_seen == 3 and model.num_unseen == 2
    assert "class_embeddings" in model.state_dict()


def test_frozen_batch_norm() -> None:
    layer = FrozenBatchNorm2d(3)
    source = nn.BatchNorm2d(3)
    source.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    source.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    source.weight.data.copy_(torch.tensor([1.0, 2.0, 3.0]))
    layer.load_state_dict(source.state_dict())  # tolerates num_batches_tracked
    assert not any(parameter.requires_grad for parameter in layer.parameters())
    assert count(layer) == 6
    x = torch.randn(4, 3, 5, 5)
    layer.train()
    train_output = layer(x)
    assert torch.equal(layer.running_mean, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(train_output, source.eval()(x), atol=1e-5)
    model = tiny_model().train()
    assert all(not parameter.requires_grad for module in model.modules()
               if isinstance(module, FrozenBatchNorm2d) for parameter in module.parameters())
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def test_pixel_rows_match_maps() -> None:
    generator = Generator(4, 3, 5, hidden_dims=(6,), dropouts=(0.5,)).eval()
    condition, latent = torch.randn(7, 4), torch.randn(7, 3)
    rows = generator(condition, latent)
    maps = generator(condition.t()[None, :, :, None], latent.t()[None, :, :, None])
    assert rows.shape == (7, 5)
    assert torch.allclose(rows, maps[0, :, :, 0].t(), atol=1e-6)
    discriminator = Discriminator(5, 8, num_classes=2).eval()
    row_output = discriminator(rows)
    assert row_output.adversarial_logit.shape == (7, 1)
    assert row_output.class_logits.shape == (7, 3)
    assert discriminator.real_class_logits(row_output.class_logits).shape == (7, 2)


def test_kaiming_init() -> None:
    conv = nn.Conv2d(64, 256, 3, bias=True)
    nn.init.constant_(conv.bias, 1.0)
    kaiming_init(conv)
    assert bool((conv.bias == 0).all())
    expected_std = (2.0 / (64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05


def test_feature_size_probe_for_plain_backbone() -> None:
    backbone = nn.Sequential(nn.Conv2d(3, EMBED, 3, stride=2, padding=1), nn.BatchNorm2d(EMBED))
    model = tiny_model()
    model = CaGNet(backbone, model.context, model.generator, model.discriminator,
                   model.class_embeddings, 3).train()
    running_mean = backbone[1].running_mean.clone()
    assert model.feature_size(9, 10) == (5, 5)
    assert model.feature_size(9, 10) == (5, 5)  # cached
    assert backbone.training and backbone[1].training
    assert torch.equal(backbone[1].running_mean, running_mean)


def test_every_trainable_parameter_gets_a_gradient() -> None:
    model = tiny_model().train()
    images = torch.randn(2, 3, 33, 33)
    labels = torch.randint(0, 3, (2, 33, 33))
    output = model.multi_scale_features(images, sample_latent=True)
    grid_labels = losses.resize_labels(labels, output.scale1.feature.shape[-2:])
    valid = grid_labels != 255
    logits = [model.discriminator(feature).class_logits for feature in output.features]
    fake = model.generate(grid_labels, output.scale1.latent.detach())
    fake_heads = model.discriminator(fake)
    total = (losses.multi_scale_classification_loss(logits, labels)
             + losses.kl_divergence(output.scale1.latent_mean, output.scale1.latent_logvar, valid)
             + losses.adversarial_generator_loss("l1", fake_heads.adversarial_logit, valid)
             + losses.content_loss("mmd", fake, output.scale1.feature.detach(), grid_labels))
    total.backward()
    missing = [name for name, parameter in model.named_parameters()
               if parameter.requires_grad and parameter.grad is None]
    assert missing == []
