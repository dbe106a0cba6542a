"""CaGNet's feature generator, method.md §1.4: a per-pixel MLP of 1x1 convs, [class embedding,
latent code] -> fake pixel feature in (0, 1), on maps (B, C, h, w) or pixel rows (N, C)."""

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.backbone import kaiming_init


def apply_per_pixel(function: Callable[[torch.Tensor], torch.Tensor],
                    x: torch.Tensor) -> torch.Tensor:
    """Run a per-pixel function (1x1 convs, pointwise ops) on maps (B, C, h, w), or on pixel
    rows (N, C) viewed as one (1, C, N, 1) map (the result is then (N, C_out))."""
    if x.dim() == 4:
        return function(x)
    if x.dim() != 2:
        raise ValueError(f"expected (B, C, h, w) or (N, C) input, got shape {tuple(x.shape)}")
    return function(x.t()[None, :, :, None])[0, :, :, 0].t()


class Generator(nn.Module):
    """Fake-feature generator G(condition (E channels), latent (L)) -> feature (F): per entry of
    `hidden_dims` / `dropouts` a 1x1 conv -> LeakyReLU(0.2) -> Dropout, then a 1x1 conv."""

    def __init__(self, embed_dim: int = 600, latent_dim: int = 600, feature_dim: int = 600,
                 hidden_dims: tuple[int, ...] = (1024, 960, 864, 784, 720),
                 dropouts: tuple[float, ...] = (0.1, 0.1, 0.3, 0.5, 0.5)) -> None:
        super().__init__()
        if len(hidden_dims) != len(dropouts):
            raise ConfigError(f"generator hidden_dims {tuple(hidden_dims)} and dropouts "
                              f"{tuple(dropouts)} must have the same length")
        self.embed_dim, self.latent_dim, self.feature_dim = embed_dim, latent_dim, feature_dim
        widths = [embed_dim + latent_dim, *hidden_dims]
        self.hidden_layers = nn.ModuleList(nn.Sequential(OrderedDict(
            conv=nn.Conv2d(widths[i], widths[i + 1], 1, bias=True), activation=nn.LeakyReLU(0.2),
            dropout=nn.Dropout(dropouts[i]))) for i in range(len(hidden_dims)))
        self.output = nn.Conv2d(widths[-1], feature_dim, 1, bias=True)
        kaiming_init(self)

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden_layers:
            x = layer(x)
        return torch.sigmoid(self.output(x))

    def forward(self, condition: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """condition (B, E, h, w), latent (B, L, h, w) -> (B, F, h, w) in (0, 1); or rows (N, C)."""
        x = torch.cat([condition, latent.to(condition.dtype)], dim=1)
        return apply_per_pixel(self._network, x)
