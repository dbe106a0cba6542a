"""The composed CaGNet: backbone + contextual module + generator + discriminator, tensors only;
multi-scale in training (method.md §1.3), single-scale real-class logits at inference."""

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.contextual import ContextOutput, ContextualModule
from cagnet.models.discriminator import Discriminator
from cagnet.models.generator import Generator
from cagnet.models.trunks import probe_output


def multi_scale_maps(network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     scales: Sequence[float]) -> list[torch.Tensor]:
    """`network` on images (B, 3, H, W) resized bilinearly to (int(s H), int(s W)) per scale s, in
    order, then (for several scales) their element-wise max on the scale-1 grid (maps upsampled)."""
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


class MultiScaleOutput(NamedTuple):
    """Training-time features at every scale."""

    scale1: ContextOutput  # the full output at scale 1.0 (KL, GAN, content, latent)
    features: list[torch.Tensor]  # (B, E, h_s, w_s) per train scale, then their max at scale 1


class ClassEmbeddingModel(nn.Module):
    """A network over a `class_embeddings` buffer (K, E), its first `num_seen` rows seen."""

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    @property
    def num_unseen(self) -> int:
        return self.num_classes - self.num_seen


class CaGNet(ClassEmbeddingModel):
    """Context-aware feature generation network over `class_embeddings` (K, E), the `num_seen`
    seen classes first; `backbone` maps (B, 3, H, W) -> (B, E, h, w); `train_scales` must hold
    1.0; `generator_latent` "context" (z conditions the generator in step 1) or "noise" (N(0, I)
    instead: the ablation of the context)."""

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
        self.backbone, self.context = backbone, context  # in this order: the state-dict order
        self.generator, self.discriminator = generator, discriminator
        self.register_buffer("class_embeddings", class_embeddings.detach().float().clone())
        self.num_seen, self.generator_latent = num_seen, generator_latent
        self.train_scales = tuple(float(scale) for scale in train_scales)
        self._feature_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def features(self, images: torch.Tensor, sample_latent: bool) -> ContextOutput:
        """Single-scale backbone + contextual module: images (B, 3, H, W) -> maps (B, E, h, w)."""
        return self.context(self.backbone(images), sample_latent)

    def multi_scale_features(self, images: torch.Tensor, sample_latent: bool) -> MultiScaleOutput:
        """The features of `multi_scale_maps` over `train_scales`, and the scale-1 output."""
        outputs = []  # the full ContextOutput of every scale

        def feature(scaled: torch.Tensor) -> torch.Tensor:
            outputs.append(self.features(scaled, sample_latent))
            return outputs[-1].feature
        features = multi_scale_maps(feature, images, self.train_scales)
        return MultiScaleOutput(outputs[self.train_scales.index(1.0)], features)

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B, h, w) int64 -> class embeddings (B, E, h, w); zero outside 0..K-1 (255)."""
        valid = (labels >= 0) & (labels < self.num_classes)
        rows = self.class_embeddings[labels.clamp(0, self.num_classes - 1)]  # (B, h, w, E)
        rows = rows * valid.unsqueeze(-1).to(rows.dtype)
        return rows.permute(0, 3, 1, 2).contiguous()

    def generate(self, labels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """labels (B, h, w) and latent (B, L, h, w) -> fake features (B, F, h, w)."""
        return self.generator(self.condition(labels), latent)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Single-scale real-class logits (B, K, h, w) with z = mean (`eval()` first: dropout)."""
        feature = self.features(images, sample_latent=False).feature
        return self.discriminator.real_class_logits(self.discriminator(feature).class_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as `segment`: images (B, 3, H, W) -> real-class logits (B, K, h, w)."""
        return self.segment(images)

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Grid (h, w) for an (H, W) input: the backbone's `feature_size`, else probed (cached)."""
        analytic = getattr(self.backbone, "feature_size", None)
        if callable(analytic):
            return tuple(analytic(height, width))
        key = (int(height), int(width))
        if key not in self._feature_sizes:
            self._feature_sizes[key] = tuple(int(n) for n in probe_output(self.backbone, *key)[-2:])
        return self._feature_sizes[key]
