"""Pluggable backbones: a torchvision ResNet-18 trunk behind the ASPP trains a step-1
iteration and segments; BatchNorm freezing, the torchvision input conversion, the optimiser's
ASPP groups, and the checks on the trunk's output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cagnet.datasets.build import build_benchmark, build_dataset
from cagnet.models.build import build_cagnet
from cagnet.config import load_config
from cagnet.datasets.segmentation import collate_samples
from cagnet.engine.optim import backbone_parameter_groups, build_optimizers, set_learning_rates
from cagnet.engine.steps import LabelDraw, StepContext, feature_generation_step
from cagnet.errors import ConfigError
from cagnet.models import FrozenBatchNorm2d
from cagnet.models.trunks import (TorchvisionInput, TrunkWithASPP, freeze_batch_norm,
                                     torchvision_resnet_trunk)
from cagnet.utils.runtime import autocast_factory

from conftest import tiny_config_overrides

torchvision = pytest.importorskip("torchvision")
MEAN_BGR = (104.008, 116.669, 122.675)


def test_resnet18_trunk_trains_a_step1_iteration_and_segments(tiny_voc: Path):
    config = load_config(None, tiny_config_overrides(tiny_voc) + ["data.warp_size=72",
                                                                  "data.crop_size=64"])
    benchmark = build_benchmark(config)
    torch.manual_seed(0)
    trunk = torchvision_resnet_trunk(torchvision.models.resnet18(weights=None), MEAN_BGR)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                        trunk=trunk, trunk_channels=512)
    assert isinstance(model.backbone, TrunkWithASPP)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    groups = {group["name"] for group in backbone_parameter_groups(model.backbone, model.context,
                                                                config.optim)}
    assert {"trunk", "aspp_weight", "aspp_bias", "context"} <= groups

    optimizers = build_optimizers(model, config.optim, train_backbone=True)
    set_learning_rates(optimizers, 0, config.train.iterations, config.optim)
    dataset = build_dataset(config.data, benchmark.split, seed=0)
    batch = collate_samples([dataset[(0, 0)], dataset[(1, 1)]])
    before = {name: p.detach().clone() for name, p in model.backbone.named_parameters()}
    model.train()
    terms = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                    StepContext(torch.device("cpu"), autocast_factory(torch.device("cpu"),
                                                                        "none")), True)
    assert terms["skipped"] == 0.0
    changed = {name for name, p in model.backbone.named_parameters()
               if not torch.equal(p, before[name])}
    assert any(name.startswith("trunk.") for name in changed)
    assert any(name.startswith("aspp.") for name in changed)

    model.eval()
    with torch.no_grad():
        logits = model.segment(torch.zeros(2, 3, 64, 48))
    assert model.feature_size(64, 48) == (2, 2)  # ResNet-18, output stride 32
    assert logits.shape == (2, benchmark.class_embeddings.shape[0], 2, 2)


def test_trunk_channels_are_measured_or_checked():
    trunk = nn.Sequential(nn.Conv2d(3, 6, 3, stride=4, padding=1), nn.ReLU())
    backbone = TrunkWithASPP(trunk, None, embed_dim=5, dilations=(1, 2))
    assert backbone.trunk_channels == 6
    assert backbone(torch.zeros(1, 3, 17, 9)).shape == (1, 5, 5, 3)
    assert backbone.feature_size(17, 9) == (5, 3)
    wrong = TrunkWithASPP(trunk, 7, embed_dim=5, dilations=(1,))
    with pytest.raises(ConfigError, match="expected \\(B, 7, h, w\\)"):
        wrong(torch.zeros(1, 3, 8, 8))


def test_frozen_batch_norm_keeps_statistics_and_outputs():
    layer = nn.BatchNorm2d(3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.5, 2.0]))
        layer.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
    network = nn.Sequential(nn.Identity(), layer)
    x = torch.randn(2, 3, 4, 4)
    expected = network.eval()(x)
    frozen = freeze_batch_norm(network)
    assert isinstance(frozen[1], FrozenBatchNorm2d)
    frozen.train()  # frozen BatchNorm ignores the mode
    assert torch.allclose(frozen(x), expected, atol=1e-6)
    assert not any(p.requires_grad for p in frozen[1].parameters())


def test_torchvision_input_turns_caffe_bgr_into_normalised_rgb():
    convert = TorchvisionInput(MEAN_BGR)
    pixel = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)  # B, G, R in 0..255
    caffe = pixel - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)
    rgb = torch.tensor([30.0, 20.0, 10.0]) / 255
    expected = (rgb - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(convert(caffe).flatten(), expected, atol=1e-5)
