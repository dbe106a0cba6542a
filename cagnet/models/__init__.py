"""The networks of CaGNet (method.md §1): backbone, contextual module, generator, discriminator."""

from cagnet.models.backbone import ASPP, Bottleneck, DeepLabV2, FrozenBatchNorm2d, kaiming_init
from cagnet.models.cagnet_model import CaGNet, MultiScaleOutput
from cagnet.models.contextual import ContextOutput, ContextualModule
from cagnet.models.discriminator import Discriminator, DiscriminatorOutput
from cagnet.models.generator import Generator, apply_per_pixel

__all__ = ["ASPP", "Bottleneck", "CaGNet", "ContextOutput", "ContextualModule", "DeepLabV2",
           "Discriminator", "DiscriminatorOutput", "FrozenBatchNorm2d", "Generator",
           "MultiScaleOutput", "apply_per_pixel", "kaiming_init"]
