"""The inference path's speed-ups change no prediction: frozen BatchNorm folded into its conv
(DeepLab-v2 backbone and a torchvision trunk), NHWC weights, the argmax upsampled a group of
classes at a time, and test-time augmentation's flip equivariance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cagnet.config import ModelConfig
from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.transforms import EvalTransform
from cagnet.engine.evaluate import segment, upsampled_argmax
from cagnet.models.backbone import FrozenBatchNorm2d
from cagnet.models.build import build_cagnet
from cagnet.models.fold import fold_batch_norm, inference_model

from conftest import SHARED_DATA

MEAN_BGR = (104.008, 116.669, 122.675)
TINY = ModelConfig(blocks_per_stage=[1, 2, 1, 1], base_width=8, aspp_dilations=[1, 2],
                   context_channels=8, generator_hidden=[16], generator_dropout=[0.1],
                   discriminator_hidden=16)


def randomise_batch_norm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial frozen statistics, so that folding has something to fold."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            count = module.num_features
            module.weight.data = 0.5 + torch.rand(count, generator=generator)
            module.bias.data = 0.2 * torch.randn(count, generator=generator)
            module.running_mean.data = 0.2 * torch.randn(count, generator=generator)
            module.running_var.data = 0.5 + torch.rand(count, generator=generator)
    return model.eval()


def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(6, 16), dim=1)
    resnet = dataclasses.replace(TINY, trunk="torchvision:resnet18")  # an fx feature extractor
    return {"deeplab": randomise_batch_norm(build_cagnet(TINY, embeddings, 4)),
            "torchvision": randomise_batch_norm(build_cagnet(resnet, embeddings, 4))}


def photos(warp: int = 161) -> torch.Tensor:
    files = sorted((SHARED_DATA / "voc-samples").glob("*_image.png"))
    if not files:
        pytest.skip(f"{SHARED_DATA / 'voc-samples'} not available")
    transform = EvalTransform(MEAN_BGR, warp)
    return torch.stack([torch.from_numpy(transform(image, image[..., 0])[0])
                        for image in map(read_image_bgr, files)])


@pytest.mark.parametrize("name", ["deeplab", "torchvision"])
def test_folded_model_predicts_like_the_trained_one_on_real_photos(name: str):
    model = tiny_models()[name]
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in folded.backbone.modules())
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    images = photos()
    assert len(images) == 14
    with torch.no_grad():
        reference, result = model.segment(images), folded.segment(images)
        nhwc = inference_model(folded, channels_last=True, inplace=False).segment(
            images.contiguous(memory_format=torch.channels_last))
    scale = reference.abs().max()
    assert (result - reference).abs().max() <= 1e-4 * scale
    assert torch.equal(result.argmax(1), reference.argmax(1))
    # NHWC runs other conv kernels (another summation order): close, not bit-equal.
    assert (nhwc - reference).abs().max() <= 1e-3 * scale


class SamePaddingConv(torch.nn.Conv2d):
    """A conv with its own forward, like EfficientNet's: pads asymmetrically, then convolves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride)


def test_folding_leaves_convs_with_their_own_forward_alone():
    """Found on MSRC: folding EfficientNet's stem replaced its padding conv by a plain one, so
    `cagnet eval` scored another model than the trainer (hIoU 0.0953 against 0.0917)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(SamePaddingConv(3, 4, 3, stride=2), FrozenBatchNorm2d(4),
                                torch.nn.Conv2d(4, 5, 3, padding=1, bias=False),
                                FrozenBatchNorm2d(5))
    model = randomise_batch_norm(model)
    folded = fold_batch_norm(model)
    assert isinstance(folded[0], SamePaddingConv) and isinstance(folded[1], FrozenBatchNorm2d)
    assert isinstance(folded[3], torch.nn.Identity)  # the plain conv's BN is still folded
    images = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-5, atol=1e-5)


def test_grouped_upsampled_argmax_is_exactly_the_full_argmax():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 9, 11, generator=generator) * 3
    for size in ((61, 45), (13, 100), (9, 11), (3, 4)):
        upsampled = F.interpolate(logits[None], size=size, mode="bilinear",
                                  align_corners=False)[0]
        for budget in (1, 2 * size[0] * size[1], 1 << 24):  # 1, 2 and all classes per group
            index, confidence = upsampled_argmax(logits, size, budget, confidence=True)
            assert torch.equal(index, upsampled.argmax(0))
            torch.testing.assert_close(confidence, upsampled.softmax(0).amax(0))


def test_test_time_augmentation_is_flip_equivariant_on_the_scale_one_grid():
    model = tiny_models()["deeplab"]
    images = torch.randn(2, 3, 65, 81, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        plain = segment(model, images)
        assert torch.equal(plain, model.segment(images))
        flipped = segment(model, images, (1.0,), flip=True)
        torch.testing.assert_close(flipped, segment(model, images.flip(-1), (1.0,),
                                                    flip=True).flip(-1))
        scaled = segment(model, images, (0.5, 1.0, 1.5), flip=True)
    assert scaled.shape == plain.shape
    assert np.isfinite(scaled.numpy()).all()
