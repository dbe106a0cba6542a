"""The composed CaGNet model: backbone + contextual module + generator + discriminator.

The model only computes tensors; losses and updates live in `cagnet.losses` and
`cagnet.engine.steps`. Class order everywhere is seen (split order) then unseen.

Training uses `multi_scale_features` (scales 1, 0.5, 0.75 plus their element-wise max,
method.md §1.3); inference (`segment`) is single-scale and never exposes the discriminator's
extra logit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.contextual import ContextOutput, ContextualModule
from cagnet.models.discriminator import Discriminator
from cagnet.models.generator import Generator


class MultiScaleOutput(NamedTuple):
    """Training-time features at every scale."""

    scale1: ContextOutput  # the full output at scale 1.0 (KL, GAN, content, latent)
    features: list[torch.Tensor]  # (B, E, h_s, w_s) per train scale, then their max at scale 1


class CaGNet(nn.Module):
    """Context-aware feature generation network.

    Args:
        backbone: any module mapping images (B, 3, H, W) -> (B, E, h, w) (normally DeepLabV2).
        context: the contextual module.
        generator: the feature generator.
        discriminator: the discriminator / segmentation classifier over K classes.
        class_embeddings: (K, E) class embeddings, seen classes first, then unseen.
        num_seen: S, the number of seen classes (rows 0..S-1).
        train_scales: input scales of `multi_scale_features`; must contain 1.0.
        generator_latent: "context" (the contextual module's code z conditions the generator
            in step 1) or "noise" (N(0, I) instead: the ablation of the context).
    """

    def __init__(self, backbone: nn.Module, context: ContextualModule, generator: Generator,
                 discriminator: Discriminator, class_embeddings: torch.Tensor, num_seen: int,
                 train_scales: tuple[float, ...] = (1.0, 0.5, 0.75),
                 generator_latent: str = "context") -> None:
        super().__init__()
        if class_embeddings.dim() != 2:
            raise ConfigError(f"class embeddings must be a (K, E) matrix, got shape "
                              f"{tuple(class_embeddings.shape)}")
        num_classes, embed_dim = class_embeddings.shape
        if not 0 < num_seen <= num_classes:
            raise ConfigError(f"num_seen must be in 1..{num_classes}, got {num_seen}")
        if 1.0 not in train_scales:
            raise ConfigError(f"model.train_scales must contain 1.0, got {tuple(train_scales)}")
        if getattr(generator, "embed_dim", embed_dim) != embed_dim:
            raise ConfigError(f"generator expects {generator.embed_dim}-d class embeddings, the "
                              f"embedding matrix has {embed_dim} columns")
        if discriminator.num_classes != num_classes:
            raise ConfigError(f"discriminator has {discriminator.num_classes} classes, the "
                              f"embedding matrix has {num_classes} rows")
        self.backbone = backbone
        self.context = context
        self.generator = generator
        self.discriminator = discriminator
        self.register_buffer("class_embeddings", class_embeddings.detach().float().clone())
        self.num_seen = num_seen
        self.train_scales = tuple(float(scale) for scale in train_scales)
        self.generator_latent = generator_latent
        self._feature_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    @property
    def num_classes(self) -> int:
        """K = seen + unseen."""
        return self.class_embeddings.shape[0]

    @property
    def num_unseen(self) -> int:
        return self.num_classes - self.num_seen

    def features(self, images: torch.Tensor, sample_latent: bool) -> ContextOutput:
        """Single-scale backbone + contextual module: images (B, 3, H, W) -> maps (B, E, h, w)."""
        return self.context(self.backbone(images), sample_latent)

    def multi_scale_features(self, images: torch.Tensor, sample_latent: bool) -> MultiScaleOutput:
        """Features at every train scale (input resized bilinearly to (int(s H), int(s W))),
        in `train_scales` order, followed by their element-wise max on the scale-1 grid (the
        smaller maps bilinearly upsampled). With a single scale the list holds one map."""
        height, width = images.shape[-2:]
        outputs: dict[float, ContextOutput] = {}
        for scale in self.train_scales:
            scaled = images
            if scale != 1.0:
                scaled = F.interpolate(images, size=(int(scale * height), int(scale * width)),
                                       mode="bilinear", align_corners=False)
            outputs[scale] = self.features(scaled, sample_latent)
        scale1 = outputs[1.0]
        features = [outputs[scale].feature for scale in self.train_scales]
        if len(features) > 1:
            grid = scale1.feature.shape[-2:]
            maximum = scale1.feature
            for scale in self.train_scales:
                if scale == 1.0:
                    continue
                upsampled = F.interpolate(outputs[scale].feature, size=grid, mode="bilinear",
                                          align_corners=False)
                maximum = torch.maximum(maximum, upsampled)
            features.append(maximum)
        return MultiScaleOutput(scale1, features)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B, h, w) int64 -> class embedding per pixel (B, E, h, w); labels outside
        0..K-1 (255 in particular) get a zero vector."""
        valid = (labels >= 0) & (labels < self.num_classes)
        rows = self.class_embeddings[labels.clamp(0, self.num_classes - 1)]  # (B, h, w, E)
        rows = rows * valid.unsqueeze(-1).to(rows.dtype)
        return rows.permute(0, 3, 1, 2).contiguous()

    def generate(self, labels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """labels (B, h, w) and latent (B, L, h, w) -> fake features (B, F, h, w)."""
        return self.generator(self.condition(labels), latent)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Single-scale class logits (B, K, h, w) of the real classes only.

        Uses z = mean (no sampling); dropout follows the module mode, so call `eval()` first.
        """
        feature = self.features(images, sample_latent=False).feature
        logits = self.discriminator(feature).class_logits
        return self.discriminator.real_class_logits(logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as `segment`: images (B, 3, H, W) -> real-class logits (B, K, h, w)."""
        return self.segment(images)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Grid size (h, w) of the backbone output for an (H, W) input."""
        analytic = getattr(self.backbone, "feature_size", None)
        if callable(analytic):
            return tuple(analytic(height, width))
        key = (int(height), int(width))
        if key not in self._feature_sizes:
            self._feature_sizes[key] = self._probe_feature_size(*key)
        return self._feature_sizes[key]

    def _probe_feature_size(self, height: int, width: int) -> tuple[int, int]:
        # A dummy forward in eval mode (no BatchNorm statistics change), then restore every
        # submodule's own mode.
        modes = [(module, module.training) for module in self.backbone.modules()]
        self.backbone.eval()
        try:
            with torch.no_grad():
                dummy = self.class_embeddings.new_zeros(1, 3, height, width)
                output = self.backbone(dummy)
        finally:
            for module, mode in modes:
                module.training = mode
        return int(output.shape[-2]), int(output.shape[-1])
