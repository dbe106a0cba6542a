"""SPNet (Xian et al., CVPR 2019), method.md §7: semantic projection onto fixed class embeddings.

The DeepLab-v2 backbone's ASPP output h (B, E, h, w), E = the embedding dimension, is projected
onto the fixed, L2-normalised class-embedding matrix: logits = h · Eᵀ (no bias, no
temperature). Training scores only the SEEN rows of E (cross-entropy over seen classes, summed
over the multi-scale maps, method.md §1.3's scales plus their element-wise max); at test time E
holds every seen and unseen class, so an unseen class can win the argmax only through its
embedding. There is no contextual module, no generator and no learned classifier: the only
trainable module is `backbone`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cagnet.errors import ConfigError


def multi_scale_maps(network: nn.Module, images: torch.Tensor,
                     scales: Sequence[float]) -> list[torch.Tensor]:
    """`network` at every scale (input resized bilinearly to (int(s H), int(s W))) in `scales`
    order, then the element-wise max of all of them on the scale-1 grid (smaller maps
    bilinearly upsampled); a single scale gives one map. images (B, 3, H, W) -> maps
    (B, C, h_s, w_s)."""
    height, width = images.shape[-2:]
    maps = []
    for scale in scales:
        scaled = images if scale == 1.0 else F.interpolate(
            images, size=(int(scale * height), int(scale * width)), mode="bilinear",
            align_corners=False)
        maps.append(network(scaled))
    if len(maps) == 1:
        return maps
    reference = maps[list(scales).index(1.0)]
    maximum = reference
    for scale, output in zip(scales, maps):
        if scale != 1.0:
            maximum = torch.maximum(maximum, F.interpolate(
                output, size=reference.shape[-2:], mode="bilinear", align_corners=False))
    return maps + [maximum]


def projection_logits(features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """features (B, E, h, w) and embeddings (C, E) -> logits (B, C, h, w) = feature · Eᵀ."""
    return torch.einsum("behw,ce->bchw", features, class_embeddings.to(features.dtype))


class SPNet(nn.Module):
    """Backbone + fixed semantic projection.

    Args:
        backbone: images (B, 3, H, W) -> (B, E, h, w) (DeepLab-v2 with its ASPP head).
        class_embeddings: (K, E), seen classes first; rows are L2-normalised here.
        num_seen: S, the rows used in training.
        train_scales: input scales of `multi_scale_features`; must contain 1.0.
    """

    def __init__(self, backbone: nn.Module, class_embeddings: torch.Tensor, num_seen: int,
                 train_scales: Sequence[float] = (1.0, 0.5, 0.75)) -> None:
        super().__init__()
        if class_embeddings.dim() != 2 or not 0 < num_seen <= class_embeddings.shape[0]:
            raise ConfigError(f"SPNet needs a (K, E) embedding matrix and 0 < num_seen <= K, "
                              f"got shape {tuple(class_embeddings.shape)}, num_seen {num_seen}")
        if 1.0 not in train_scales:
            raise ConfigError(f"model.train_scales must contain 1.0, got {tuple(train_scales)}")
        self.backbone = backbone
        normalised = F.normalize(class_embeddings.detach().float(), dim=1)
        self.register_buffer("class_embeddings", normalised.clone())
        self.num_seen = num_seen
        self.train_scales = tuple(float(scale) for scale in train_scales)

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    @property
    def num_unseen(self) -> int:
        return self.num_classes - self.num_seen

    def multi_scale_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """ASPP features (B, E, h_s, w_s) at every train scale, then their max."""
        return multi_scale_maps(self.backbone, images, self.train_scales)

    def seen_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, E, h, w) -> (B, S, h, w): projection onto the seen rows only (training)."""
        return projection_logits(features, self.class_embeddings[:self.num_seen])

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Single-scale logits over all K classes: images (B, 3, H, W) -> (B, K, h, w)."""
        return projection_logits(self.backbone(images), self.class_embeddings)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segment(images)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Grid size (h, w) of the backbone output for an (H, W) input."""
        return tuple(self.backbone.feature_size(height, width))
