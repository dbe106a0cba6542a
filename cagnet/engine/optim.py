"""Optimisers with the parameter groups of method.md §3.3 and their per-iteration rates."""

from dataclasses import dataclass

import torch
from torch import nn

from cagnet.config import OptimConfig
from cagnet.engine.schedules import poly_lr, step_decay


@dataclass
class Optimizers:
    """CaGNet's optimisers; `backbone` is None when frozen, `generator` for class extension."""

    backbone: torch.optim.Optimizer | None
    discriminator: torch.optim.Optimizer
    generator: torch.optim.Optimizer | None

    def named(self) -> dict[str, torch.optim.Optimizer]:
        items = {"discriminator": self.discriminator, "generator": self.generator,
                 "backbone": self.backbone}
        return {name: optimizer for name, optimizer in items.items() if optimizer is not None}

    def zero_grad(self) -> None:
        for optimizer in self.named().values():
            optimizer.zero_grad(set_to_none=True)


def backbone_optimizer(backbone: nn.Module, context: nn.Module | None,
                       optim: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum over the backbone's learning-rate groups (method.md §3.3)."""
    aspp = getattr(backbone, "aspp", None)
    aspp_parameters = [p for p in aspp.parameters() if p.requires_grad] if aspp is not None else []
    aspp_ids = {id(p) for p in aspp_parameters}
    trunk = [p for p in backbone.parameters() if p.requires_grad and id(p) not in aspp_ids]
    context_parameters = [p for p in context.parameters() if p.requires_grad] \
        if context is not None else []
    groups = [{"params": trunk, "lr_mult": optim.lr_mult_trunk, "name": "trunk"},
              {"params": context_parameters, "lr_mult": optim.lr_mult_context, "name": "context"},
              {"params": [p for p in aspp_parameters if p.ndim > 1],
               "lr_mult": optim.lr_mult_aspp_weight, "name": "aspp_weight"},
              {"params": [p for p in aspp_parameters if p.ndim == 1],
               "lr_mult": optim.lr_mult_aspp_bias, "name": "aspp_bias", "weight_decay": 0.0}]
    return torch.optim.SGD([group for group in groups if group["params"]], lr=optim.backbone_lr,
                           momentum=optim.backbone_momentum,
                           weight_decay=optim.backbone_weight_decay)


def build_optimizers(model: nn.Module, optim: OptimConfig, train_backbone: bool) -> Optimizers:
    """The optimisers of a `CaGNet` (rates are set per iteration by `set_learning_rates`)."""
    backbone = backbone_optimizer(model.backbone, model.context, optim) if train_backbone else None
    betas = (optim.adam_betas[0], optim.adam_betas[1])
    discriminator = torch.optim.Adam(model.discriminator.parameters(), lr=optim.discriminator_lr,
                                     betas=betas, weight_decay=optim.discriminator_weight_decay)
    generator = torch.optim.Adam(model.generator.parameters(), lr=optim.generator_lr,
                                 betas=betas, weight_decay=optim.generator_weight_decay)
    for optimizer in (discriminator, generator):
        for group in optimizer.param_groups:
            group["lr_mult"] = 1.0
    return Optimizers(backbone, discriminator, generator)


def learning_rates(iteration: int, total_iterations: int, optim: OptimConfig) -> dict[str, float]:
    """Base learning rates of the three optimisers at `iteration` (before group multipliers)."""
    d, g = optim.discriminator_decay, optim.generator_decay
    return {
        "backbone": poly_lr(optim.backbone_lr, iteration, total_iterations, optim.poly_power,
                            optim.poly_refresh),
        "discriminator": optim.discriminator_lr * step_decay(iteration, d.start, d.step, d.gamma),
        "generator": optim.generator_lr * step_decay(iteration, g.start, g.step, g.gamma),
    }


def set_learning_rates(optimizers: Optimizers, iteration: int, total_iterations: int,
                       optim: OptimConfig) -> dict[str, float]:
    """Apply `learning_rates` to every parameter group; returns the base rates for logging."""
    rates = learning_rates(iteration, total_iterations, optim)
    for name, optimizer in optimizers.named().items():
        for group in optimizer.param_groups:
            group["lr"] = rates[name] * group.get("lr_mult", 1.0)
    return rates
