"""DeepLab-v2 ResNet backbone ("Caffe style", method.md §1.1): dilated to output stride 8, the
stride on the 1x1 reduce convs, BatchNorm frozen, under an ASPP head of summed dilated 3x3 convs;
the defaults are the paper's ResNet-101. Also `kaiming_init`, every CaGNet network's init."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from cagnet.errors import ConfigError

STAGE_NAMES = ("res2", "res3", "res4", "res5")
STAGE_STRIDES = (1, 2, 1, 1)
EXPANSION = 4


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal (fan_in, a = 0) weights and zero biases for every conv inside `module`."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm that always uses its running statistics (B, C, H, W) -> (B, C, H, W); `weight`
    and `bias` are frozen parameters (counted in parameters and state dicts, as in the paper)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *arguments) -> None:
        # Files saved from an ordinary nn.BatchNorm2d carry a counter we have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *arguments)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ConvBatchNorm(nn.Module):
    """A bias-free conv followed by a frozen BatchNorm (no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=False)
        self.bn = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Stem(nn.Module):
    """7x7 stride-2 conv + BN + ReLU, then a 3x3 stride-2 max-pool with ceil_mode."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn = FrozenBatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bn(self.conv(images))))


class Bottleneck(nn.Module):
    """Caffe style: 1x1 reduce (strided) -> 3x3 dilated -> 1x1 increase (+ projection)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int,
                 dilation: int, project: bool) -> None:
        super().__init__()
        self.reduce = ConvBatchNorm(in_channels, mid_channels, 1, stride=stride)
        self.conv3x3 = ConvBatchNorm(mid_channels, mid_channels, 3, padding=dilation,
                                     dilation=dilation)
        self.increase = ConvBatchNorm(mid_channels, out_channels, 1)
        self.projection = (ConvBatchNorm(in_channels, out_channels, 1, stride=stride)
                           if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        out = F.relu(self.conv3x3(F.relu(self.reduce(x))))
        return F.relu(self.increase(out) + shortcut)


class ASPP(nn.Module):
    """DeepLab-v2's ASPP: parallel dilated 3x3 convs (with bias), summed; no BN, no activation."""

    def __init__(self, in_channels: int, out_channels: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d, bias=True)
            for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, h, w) -> (B, C_out, h, w)."""
        return sum((branch(x) for branch in self.branches[1:]), self.branches[0](x))


def _grid_size(size: int) -> int:
    """Output length for an input length: the stem's 7x7 stride-2 conv (padding 3), its 3x3
    stride-2 ceil-mode max-pool (padding 1), then res3's stride-2 1x1 reduce conv."""
    size = (size + 2 * 3 - 7) // 2 + 1
    pooled = math.ceil((size + 2 * 1 - 3) / 2) + 1
    if (pooled - 1) * 2 >= size + 1:  # PyTorch drops a last window starting in the padding
        pooled -= 1
    return (pooled - 1) // 2 + 1


class DeepLabV2(nn.Module):
    """DeepLab-v2 ResNet with ASPP: images (B, 3, H, W) -> pre-activation map (B, E, h, w).
    `blocks_per_stage`: bottlenecks of res2..res5 ((3, 4, 23, 3) = ResNet-101); stage i has mid /
    out channels (base_width * 2**i, 4 * base_width * 2**i); dilations (= paddings) per ASPP
    branch and per stage (its 3x3 convs)."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = (3, 4, 23, 3), base_width: int = 64,
                 embed_dim: int = 600, aspp_dilations: tuple[int, ...] = (6, 12, 18, 24),
                 stage_dilations: tuple[int, ...] = (1, 1, 2, 4)) -> None:
        super().__init__()
        if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ConfigError(f"blocks_per_stage must be 4 positive integers (res2..res5), "
                              f"got {tuple(blocks_per_stage)}")
        if len(stage_dilations) != 4:
            raise ConfigError(f"stage_dilations must have 4 entries, got {tuple(stage_dilations)}")
        if not aspp_dilations:
            raise ConfigError("aspp_dilations must list at least one dilation")
        self.embed_dim = embed_dim
        self.stem = Stem(base_width)
        in_channels = base_width
        for index, name in enumerate(STAGE_NAMES):
            mid_channels = base_width * 2 ** index
            out_channels = mid_channels * EXPANSION
            blocks = [Bottleneck(in_channels if block == 0 else out_channels, mid_channels,
                                 out_channels, stride=STAGE_STRIDES[index] if block == 0 else 1,
                                 dilation=stage_dilations[index], project=block == 0)
                      for block in range(blocks_per_stage[index])]
            setattr(self, name, nn.Sequential(*blocks))
            in_channels = out_channels
        self.trunk_channels = in_channels
        self.aspp = ASPP(in_channels, embed_dim, tuple(aspp_dilations))
        kaiming_init(self)

    def trunk_forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> res5 output (B, trunk_channels, h, w)."""
        x = self.stem(images)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-activation ASPP output (B, embed_dim, h, w)."""
        return self.aspp(self.trunk_forward(images))

    @staticmethod
    def feature_size(height: int, width: int) -> tuple[int, int]:
        """The (h, w) of the output grid for an (H, W) input (stride 8, computed analytically)."""
        return _grid_size(height), _grid_size(width)
