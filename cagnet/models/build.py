"""Every method's network from the `model` section and the class embeddings (E, and with it every
width, comes from the matrix); `zs3net` trains CaGNet's network (its GMMN rides in `extra`)."""

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
from cagnet.models.trunks import TrunkWithASPP, build_trunk

METHODS = ("cagnet", "zs3net", "spnet")
MEAN_BGR = (104.008, 116.669, 122.675)


def build_backbone(model: ModelConfig, out_channels: int, mean_bgr=MEAN_BGR,
                   load_pretrained: bool = True) -> nn.Module:
    """The trunk of `model.trunk` (`models/trunks.py`) under the ASPP (`out_channels` outputs).
    `load_pretrained` False builds the architecture only (a checkpoint brings the weights)."""
    if model.trunk == "deeplabv2_resnet101":
        if model.normalization not in ("auto", "caffe"):
            raise ConfigError(f"model.normalization: the DeepLab-v2 trunk takes caffe input, "
                              f"got {model.normalization!r}")
        return DeepLabV2(blocks_per_stage=tuple(model.blocks_per_stage),
                         base_width=model.base_width, embed_dim=out_channels,
                         aspp_dilations=tuple(model.aspp_dilations))
    trunk = build_trunk(model.trunk, model.pretrained if load_pretrained else "none",
                        model.trunk_endpoint, model.output_stride, model.normalization, mean_bgr)
    return TrunkWithASPP(trunk, None, out_channels, tuple(model.aspp_dilations))


def build_cagnet(model: ModelConfig, class_embeddings: np.ndarray | torch.Tensor, num_seen: int,
                 mean_bgr=MEAN_BGR, load_pretrained: bool = True) -> CaGNet:
    """CaGNet over `class_embeddings` (K, E), seen first; features `model.feature_dim` wide."""
    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    embed_dim, feature_dim = embeddings.shape[1], model.feature_dim
    # Built first: the modules' random initial weights are drawn in this order.
    backbone = build_backbone(model, feature_dim, mean_bgr, load_pretrained)
    context = ContextualModule(embed_dim=feature_dim, hidden_channels=model.context_channels,
                               dilations=tuple(model.context_dilations),
                               relu_before_selector=model.relu_before_selector,
                               relu_on_logvar=model.relu_on_logvar)
    if not model.train_selector:
        # Quirk of the original: the scale selector is in no optimiser group (keeps its init).
        context.selector.requires_grad_(False)
    generator = Generator(embed_dim=embed_dim, latent_dim=feature_dim, feature_dim=feature_dim,
                          hidden_dims=tuple(model.generator_hidden),
                          dropouts=tuple(model.generator_dropout))
    discriminator = Discriminator(feature_dim=feature_dim, hidden_dim=model.discriminator_hidden,
                                  num_classes=embeddings.shape[0], extra_logit=model.extra_logit,
                                  dropout=model.discriminator_dropout)
    return CaGNet(backbone, context, generator, discriminator, embeddings, num_seen,
                  train_scales=tuple(model.train_scales), generator_latent=model.generator_latent)


def build_spnet(model: ModelConfig, class_embeddings: np.ndarray | torch.Tensor, num_seen: int,
                mean_bgr=MEAN_BGR, load_pretrained: bool = True) -> SPNet:
    """SPNet over the configured trunk; its ASPP outputs E (the embeddings' dimension)."""
    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    return SPNet(build_backbone(model, embeddings.shape[1], mean_bgr, load_pretrained),
                 embeddings, num_seen, train_scales=tuple(model.train_scales))


def build_model(method: str, model: ModelConfig, class_embeddings: np.ndarray | torch.Tensor,
                num_seen: int, mean_bgr=MEAN_BGR, load_pretrained: bool = True) -> nn.Module:
    """The network of `method` (`baseline.method`)."""
    if method not in METHODS:
        raise ConfigError(f"baseline.method: expected one of {', '.join(METHODS)}, got {method!r}")
    builder = build_spnet if method == "spnet" else build_cagnet
    return builder(model, class_embeddings, num_seen, mean_bgr, load_pretrained)
