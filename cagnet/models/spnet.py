"""SPNet (Xian et al., CVPR 2019), method.md §7: ASPP features (B, E, h, w) projected onto the
fixed L2-normalised class embeddings (logits = h · Eᵀ, no bias, no temperature); training scores
the seen rows only, so an unseen class wins only through its embedding. Only `backbone` trains."""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.cagnet_model import ClassEmbeddingModel, multi_scale_maps


def projection_logits(features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """features (B, E, h, w) and embeddings (C, E) -> logits (B, C, h, w) = feature · Eᵀ."""
    return torch.einsum("behw,ce->bchw", features, class_embeddings.to(features.dtype))


class SPNet(ClassEmbeddingModel):
    """Backbone (images (B, 3, H, W) -> (B, E, h, w)) + fixed semantic projection onto
    `class_embeddings` (K, E), seen classes first (rows are L2-normalised here); the first
    `num_seen` rows are used in training; `train_scales` must contain 1.0."""

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
