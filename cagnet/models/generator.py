"""The feature generator of CaGNet, method.md §1.4.

A per-pixel MLP written as 1x1 convs: [class embedding, latent code] -> fake pixel feature in
(0, 1). It works on feature maps (B, C, h, w) and, for ZS3Net-style code and class extension, on
plain pixel rows (N, C).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.backbone import kaiming_init


def apply_per_pixel(function: Callable[[torch.Tensor], torch.Tensor],
                    x: torch.Tensor) -> torch.Tensor:
    """Run a per-pixel function (1x1 convs, pointwise ops) on maps (B, C, h, w) or on pixel rows
    (N, C).

    Rows are viewed as one (1, C, N, 1) map, so the result is (N, C_out) for (N, C) input.
    """
    if x.dim() == 4:
        return function(x)
    if x.dim() != 2:
        raise ValueError(f"expected (B, C, h, w) or (N, C) input, got shape {tuple(x.shape)}")
    out = function(x.t()[None, :, :, None])
    return out[0, :, :, 0].t()


class GeneratorLayer(nn.Module):
    """1x1 conv (with bias) -> LeakyReLU(0.2) -> Dropout(p)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.activation = nn.LeakyReLU(0.2)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(self.conv(x)))


class Generator(nn.Module):
    """Fake-feature generator G(condition, latent).

    Args:
        embed_dim: channels E of the class-embedding condition.
        latent_dim: channels L of the latent code.
        feature_dim: channels F of the generated feature.
        hidden_dims: widths of the hidden 1x1 layers.
        dropouts: dropout probability after each hidden layer (same length as `hidden_dims`).
    """

    def __init__(self, embed_dim: int = 600, latent_dim: int = 600, feature_dim: int = 600,
                 hidden_dims: tuple[int, ...] = (1024, 960, 864, 784, 720),
                 dropouts: tuple[float, ...] = (0.1, 0.1, 0.3, 0.5, 0.5)) -> None:
        super().__init__()
        if len(hidden_dims) != len(dropouts):
            raise ConfigError(f"generator hidden_dims {tuple(hidden_dims)} and dropouts "
                              f"{tuple(dropouts)} must have the same length")
        self.embed_dim = embed_dim
        self.latent_dim = latent_dim
        self.feature_dim = feature_dim
        widths = [embed_dim + latent_dim, *hidden_dims]
        self.hidden_layers = nn.ModuleList(
            GeneratorLayer(widths[i], widths[i + 1], dropouts[i]) for i in range(len(hidden_dims)))
        self.output = nn.Conv2d(widths[-1], feature_dim, 1, bias=True)
        kaiming_init(self)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden_layers:
            x = layer(x)
        return torch.sigmoid(self.output(x))

    def forward(self, condition: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """condition (B, E, h, w) and latent (B, L, h, w) -> feature (B, F, h, w) in (0, 1).

        Pixel rows work too: (N, E) and (N, L) -> (N, F).
        """
        x = torch.cat([condition, latent.to(condition.dtype)], dim=1)
        return apply_per_pixel(self._network, x)
