"""CaGNet's discriminator and segmentation classifier, method.md §1.5: a per-pixel trunk feeding
an adversarial head and the classifier, whose extra never-targeted logit (**quirk**, `extra_logit`)
joins the training cross-entropy; every argmax must use `real_class_logits`, which drops it."""

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from cagnet.models.backbone import kaiming_init
from cagnet.models.generator import apply_per_pixel


class DiscriminatorOutput(NamedTuple):
    """Both heads' outputs for (B, F, h, w) input (or (N, ...) for pixel rows)."""

    adversarial_logit: torch.Tensor  # (B, 1, h, w) raw logit (before sigmoid)
    class_logits: torch.Tensor  # (B, K [+ 1], h, w), the extra logit last when present


class Discriminator(nn.Module):
    """Shared trunk (`hidden_dim` channels) with an adversarial head and a classification head
    over `num_classes` K real classes (seen + unseen) [+ the extra logit]."""

    def __init__(self, feature_dim: int = 600, hidden_dim: int = 1024, num_classes: int = 20,
                 extra_logit: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes, self.extra_logit = num_classes, extra_logit
        self.trunk = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(feature_dim, hidden_dim, 1, bias=True), activation=nn.ReLU(),
            dropout=nn.Dropout(dropout)))
        self.adversarial_head = nn.Conv2d(hidden_dim, 1, 1, bias=True)
        self.classifier = nn.Conv2d(hidden_dim, num_classes + int(extra_logit), 1, bias=True)
        kaiming_init(self)

    def forward(self, feature: torch.Tensor) -> DiscriminatorOutput:
        """feature (B, F, h, w) or pixel rows (N, F) -> both heads' logits."""
        hidden = apply_per_pixel(self.trunk, feature)
        return DiscriminatorOutput(self.adversarial_logit(hidden),
                                   apply_per_pixel(self.classifier, hidden))

    def adversarial_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """Trunk output (B, D, h, w) or (N, D) -> raw adversarial logit (B, 1, h, w) or (N, 1)."""
        return apply_per_pixel(self.adversarial_head, hidden)

    def real_class_logits(self, class_logits: torch.Tensor) -> torch.Tensor:
        """Drop the extra logit: (B, K [+ 1], ...) -> (B, K, ...). Use this before any argmax."""
        return class_logits[:, :self.num_classes]
