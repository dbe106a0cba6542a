"""From config to network: every method's model, built from the `model` section and the class
embedding matrix (E, and with it every width, comes from the matrix, never from a constant).

`baseline.method` says which network a run trains and its checkpoints hold:

- `cagnet`: backbone + contextual module + generator + discriminator / classifier;
- `zs3net`: the same network (its classifier retrained by ZS3Net's stage; the GMMN generator
  rides in the checkpoint's `extra`);
- `spnet`: the backbone + the fixed semantic projection.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cagnet.config import ModelConfig
from cagnet.errors import ConfigError
from cagnet.models.backbone import DeepLabV2
from cagnet.models.cagnet_model import CaGNet
from cagnet.models.contextual import ContextualModule
from cagnet.models.discriminator import Discriminator
from cagnet.models.generator import Generator
from cagnet.models.spnet import SPNet
from cagnet.models.trunks import TrunkWithASPP

METHODS = ("cagnet", "zs3net", "spnet")


def build_backbone(model: ModelConfig, embed_dim: int, trunk: nn.Module | None = None,
                   trunk_channels: int | None = None) -> nn.Module:
    """The DeepLab-v2 ResNet + ASPP of `model`, or `trunk` (any module mapping (B, 3, H, W)
    images to (B, C, h, w) features, C = `trunk_channels` or measured) under the same ASPP."""
    if trunk is not None:
        return TrunkWithASPP(trunk, trunk_channels, embed_dim, tuple(model.aspp_dilations))
    return DeepLabV2(blocks_per_stage=tuple(model.blocks_per_stage),
                     base_width=model.base_width, embed_dim=embed_dim,
                     aspp_dilations=tuple(model.aspp_dilations))


def build_cagnet(model: ModelConfig, class_embeddings: np.ndarray | torch.Tensor, num_seen: int,
                 trunk: nn.Module | None = None, trunk_channels: int | None = None) -> CaGNet:
    """The composed CaGNet over `class_embeddings` (K, E), seen classes first."""
    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    embed_dim = embeddings.shape[1]
    # Built first: the modules' random initial weights are drawn in this order.
    backbone = build_backbone(model, embed_dim, trunk, trunk_channels)
    context = ContextualModule(embed_dim=embed_dim, hidden_channels=model.context_channels,
                               dilations=tuple(model.context_dilations),
                               relu_before_selector=model.relu_before_selector,
                               relu_on_logvar=model.relu_on_logvar)
    if not model.train_selector:
        # Quirk of the original: the scale selector is in no optimiser group, so it keeps its
        # initial weights. Making it non-trainable states that explicitly.
        context.selector.requires_grad_(False)
    generator = Generator(embed_dim=embed_dim, latent_dim=embed_dim, feature_dim=embed_dim,
                          hidden_dims=tuple(model.generator_hidden),
                          dropouts=tuple(model.generator_dropout))
    discriminator = Discriminator(feature_dim=embed_dim, hidden_dim=model.discriminator_hidden,
                                  num_classes=embeddings.shape[0],
                                  extra_logit=model.extra_logit,
                                  dropout=model.discriminator_dropout)
    return CaGNet(backbone, context, generator, discriminator, embeddings, num_seen,
                  train_scales=tuple(model.train_scales),
                  generator_latent=model.generator_latent)


def build_spnet(model: ModelConfig, class_embeddings: np.ndarray | torch.Tensor, num_seen: int,
                trunk: nn.Module | None = None, trunk_channels: int | None = None) -> SPNet:
    """SPNet over the configured backbone."""
    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    return SPNet(build_backbone(model, embeddings.shape[1], trunk, trunk_channels), embeddings,
                 num_seen, train_scales=tuple(model.train_scales))


def build_model(method: str, model: ModelConfig, class_embeddings: np.ndarray | torch.Tensor,
                num_seen: int, trunk: nn.Module | None = None,
                trunk_channels: int | None = None) -> nn.Module:
    """The network of `method` (`baseline.method`)."""
    if method not in METHODS:
        raise ConfigError(f"baseline.method: expected one of {', '.join(METHODS)}, got "
                          f"{method!r}")
    builder = build_spnet if method == "spnet" else build_cagnet
    return builder(model, class_embeddings, num_seen, trunk, trunk_channels)
