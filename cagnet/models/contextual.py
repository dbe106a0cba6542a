"""CaGNet's contextual module, method.md §1.2: chained dilated convs on the backbone map `h`, a
per-pixel scale selector, and a latent code z (mean, log-variance) per pixel that modulates `h`
into the real feature `f = sigmoid(h + h * sigmoid(z))` and conditions the generator."""

from typing import NamedTuple

import torch
from torch import nn

from cagnet.models.backbone import kaiming_init


class ContextOutput(NamedTuple):
    """Everything the contextual module produces, each (B, C, h, w)."""

    feature: torch.Tensor  # (B, E, h, w) real pixel feature in (0, 1)
    latent: torch.Tensor  # (B, E, h, w) z: sampled in training, the mean otherwise
    latent_mean: torch.Tensor  # (B, E, h, w)
    latent_logvar: torch.Tensor  # (B, E, h, w)
    scale_weights: torch.Tensor  # (B, 3, h, w) selector output in (0, 1)


class ContextualModule(nn.Module):
    """Contextual latent code and modulated pixel feature (all convs bias-free, no BN); `dilations`
    of the chained 3x3 context convs. Quirks of the original, on by default as in the paper:
    `relu_before_selector` (selector weights in [0.5, 1)), `relu_on_logvar` (variance >= 1)."""

    def __init__(self, embed_dim: int = 600, hidden_channels: int = 256,
                 dilations: tuple[int, ...] = (1, 2, 5), relu_before_selector: bool = True,
                 relu_on_logvar: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.relu_before_selector, self.relu_on_logvar = relu_before_selector, relu_on_logvar
        levels = len(dilations)
        in_channels = [embed_dim] + [hidden_channels] * (levels - 1)
        self.context_convs = nn.ModuleList(
            nn.Conv2d(channels, hidden_channels, 3, padding=d, dilation=d, bias=False)
            for channels, d in zip(in_channels, dilations))
        self.selector = nn.Conv2d(levels * hidden_channels, levels, 3, padding=1, bias=False)
        self.pool = nn.Conv2d(levels * hidden_channels, embed_dim, 1, bias=False)
        self.latent_mean = nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=False)
        self.latent_logvar = nn.Conv2d(embed_dim, embed_dim, 3, padding=1, bias=False)
        kaiming_init(self)

    def forward(self, h: torch.Tensor, sample_latent: bool) -> ContextOutput:
        """h: (B, E, h, w) pre-activation backbone output. `sample_latent` draws
        z = mean + eps * exp(0.5 * logvar) (training); otherwise z = mean."""
        levels = []
        x = torch.sigmoid(h)
        for conv in self.context_convs:
            x = torch.relu(conv(x))
            levels.append(x)
        scores = self.selector(torch.cat(levels, dim=1))
        scale_weights = torch.sigmoid(torch.relu(scores) if self.relu_before_selector else scores)
        weighted = torch.cat([level * scale_weights[:, i:i + 1] for i, level in enumerate(levels)],
                             dim=1)
        pooled = torch.relu(self.pool(weighted))
        latent_mean, latent_logvar = self.latent_mean(pooled), self.latent_logvar(pooled)
        if self.relu_on_logvar:
            latent_logvar = torch.relu(latent_logvar)
        latent = latent_mean
        if sample_latent:
            latent = latent_mean + torch.randn_like(latent_mean) * torch.exp(0.5 * latent_logvar)
        feature = torch.sigmoid(h + h * torch.sigmoid(latent))
        return ContextOutput(feature, latent, latent_mean, latent_logvar, scale_weights)
