"""Pluggable backbones: any image trunk followed by CaGNet's ASPP head.

A trunk is any `nn.Module` mapping an image batch (B, 3, H, W) to a feature map (B, C, h, w)
(a torchvision ResNet without `avgpool` / `fc`, a ConvNeXt stage stack, ...). `TrunkWithASPP`
puts the DeepLab-v2 ASPP on top (C -> E, the class-embedding dimension), so the contextual
module, generator and classifier, which are all E-dimensional, need no change. It exposes
`.aspp` (the optimiser gives the ASPP its own learning-rate groups), `trunk_forward` like
`DeepLabV2`, and `feature_size(H, W)` measured by one dummy forward per input size.

Inputs are the project's: BGR, 0..255, minus `data.mean_bgr` (Caffe convention). Trunks
pretrained the torchvision way (RGB, 0..1, ImageNet mean / std) go behind
`TorchvisionInput(mean_bgr)`. `freeze_batch_norm` swaps every `nn.BatchNorm2d` for the
project's `FrozenBatchNorm2d`, as the method keeps BatchNorm frozen (method.md §1.1).
"""

from __future__ import annotations

import torch
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.backbone import ASPP, FrozenBatchNorm2d, kaiming_init

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


class TorchvisionInput(nn.Module):
    """Convert the project's input (B, 3, H, W) BGR minus `mean_bgr`, 0..255 scale, to what
    torchvision's pretrained weights expect: RGB in 0..1, normalised by the ImageNet mean and
    std."""

    def __init__(self, mean_bgr: tuple[float, float, float] | list[float]) -> None:
        super().__init__()
        self.register_buffer("mean_bgr", torch.tensor(list(mean_bgr)).view(1, 3, 1, 1))
        self.register_buffer("mean_rgb", torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1))
        self.register_buffer("std_rgb", torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images + self.mean_bgr.to(images.dtype)).flip(1) / 255.0
        return (rgb - self.mean_rgb.to(images.dtype)) / self.std_rgb.to(images.dtype)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every `nn.BatchNorm2d` inside `module` (in place) by a `FrozenBatchNorm2d` with
    the same statistics and affine parameters; returns `module` (or the replacement when
    `module` itself is a BatchNorm)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats and module.running_mean is not None:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replacement = freeze_batch_norm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def probe_output(module: nn.Module, height: int, width: int) -> torch.Size:
    """Shape of `module`'s output for one (1, 3, H, W) zero image: one forward in eval mode
    without gradients; every submodule's train/eval mode is restored afterwards."""
    modes = [(child, child.training) for child in module.modules()]
    reference = next(iter(module.parameters()), None)
    if reference is None:
        reference = next(iter(module.buffers()), torch.zeros(()))
    module.eval()
    try:
        with torch.no_grad():
            dummy = torch.zeros(1, 3, height, width, device=reference.device,
                                dtype=reference.dtype if reference.is_floating_point()
                                else torch.float32)
            return module(dummy).shape
    finally:
        for child, mode in modes:
            child.training = mode


class TrunkWithASPP(nn.Module):
    """Any trunk + the DeepLab-v2 ASPP: images (B, 3, H, W) -> (B, E, h, w).

    Args:
        trunk: module mapping (B, 3, H, W) -> (B, C, h, w).
        trunk_channels: C; None measures it with one dummy forward of a 64 x 64 image.
        embed_dim: E, the ASPP output channels (the class-embedding dimension).
        dilations: dilation (= padding) of each ASPP branch.
    """

    def __init__(self, trunk: nn.Module, trunk_channels: int | None, embed_dim: int,
                 dilations: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        if not dilations:
            raise ConfigError("aspp_dilations must list at least one dilation")
        if trunk_channels is None:
            shape = probe_output(trunk, 64, 64)
            if len(shape) != 4:
                raise ConfigError(f"the trunk must return a (B, C, h, w) feature map, it "
                                  f"returns shape {tuple(shape)} for a 64 x 64 image")
            trunk_channels = int(shape[1])
        self.trunk = trunk
        self.trunk_channels = int(trunk_channels)
        self.embed_dim = embed_dim
        self.aspp = ASPP(self.trunk_channels, embed_dim, tuple(dilations))
        kaiming_init(self.aspp)
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def trunk_forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w), checking C."""
        features = self.trunk(images)
        if features.dim() != 4 or features.shape[1] != self.trunk_channels:
            raise ConfigError(f"the trunk returned shape {tuple(features.shape)}, expected "
                              f"(B, {self.trunk_channels}, h, w) (trunk_channels)")
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-activation ASPP output (B, E, h, w)."""
        return self.aspp(self.trunk_forward(images))

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the output for an (H, W) input: one dummy trunk forward per size."""
        key = (int(height), int(width))
        if key not in self._sizes:
            shape = probe_output(self.trunk, *key)
            self._sizes[key] = (int(shape[-2]), int(shape[-1]))
        return self._sizes[key]


def torchvision_resnet_trunk(resnet: nn.Module, mean_bgr, torchvision_input: bool = True
                             ) -> nn.Sequential:
    """The convolutional part of a torchvision ResNet (stem and layer1..layer4, without avgpool
    and fc), with frozen BatchNorm, behind `TorchvisionInput(mean_bgr)` when asked."""
    layers = [resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1,
              resnet.layer2, resnet.layer3, resnet.layer4]
    trunk = freeze_batch_norm(nn.Sequential(*layers))
    return nn.Sequential(TorchvisionInput(mean_bgr), trunk) if torchvision_input else trunk
