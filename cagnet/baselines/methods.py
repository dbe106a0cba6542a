"""Builders for every method's network, and loading any method's checkpoint.

`baseline.method` in a run's config says which network its checkpoints hold:

- `cagnet`: the composed CaGNet (cagnet/builders.py `build_model`);
- `zs3net`: the same CaGNet network (shared backbone + contextual module) whose classifier
  ZS3Net's stage retrained; its GMMN generator is stored in the checkpoint's `extra`;
- `spnet`: `SPNet` (DeepLab-v2 backbone + fixed semantic projection).

Every model exposes `segment(images) -> (B, K, h, w)` and `eval()`, which is all the evaluator
and the calibration sweep need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cagnet.baselines.spnet import SPNet
from cagnet.builders import Benchmark, build_benchmark, build_model
from cagnet.config import Config, ModelConfig, OptimConfig, config_from_dict, load_config
from cagnet.engine.checkpoint import load_checkpoint, load_model_state
from cagnet.engine.optim import backbone_parameter_groups
from cagnet.errors import CheckpointError, ConfigError


def build_spnet(model: ModelConfig, class_embeddings: np.ndarray, num_seen: int) -> SPNet:
    """SPNet over the configured DeepLab-v2 backbone; E comes from the embedding matrix."""
    from cagnet.models import DeepLabV2

    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    backbone = DeepLabV2(blocks_per_stage=tuple(model.blocks_per_stage),
                         base_width=model.base_width, embed_dim=embeddings.shape[1],
                         aspp_dilations=tuple(model.aspp_dilations))
    return SPNet(backbone, embeddings, num_seen, train_scales=tuple(model.train_scales))


METHOD_BUILDERS: dict[str, Callable[[ModelConfig, np.ndarray, int], nn.Module]] = {
    "cagnet": build_model,
    "zs3net": build_model,
    "spnet": build_spnet,
}


def build_method_model(config: Config, class_embeddings: np.ndarray, num_seen: int
                       ) -> nn.Module:
    """The network of `config.baseline.method`."""
    method = config.baseline.method
    if method not in METHOD_BUILDERS:
        raise ConfigError(f"baseline.method: expected one of {', '.join(METHOD_BUILDERS)}, got "
                          f"{method!r}")
    return METHOD_BUILDERS[method](config.model, class_embeddings, num_seen)


@dataclass
class _BackboneOnly:
    """The two attributes `backbone_parameter_groups` reads, for a model without a context."""

    backbone: nn.Module
    context: nn.Module


def spnet_optimizer(model: SPNet, optim: OptimConfig) -> torch.optim.SGD:
    """SGD over the backbone with CaGNet's groups (trunk 1x, ASPP weights 10x, ASPP biases 20x
    without weight decay); SPNet has no contextual module, so that group stays empty."""
    groups = backbone_parameter_groups(_BackboneOnly(model.backbone, nn.Module()), optim)
    return torch.optim.SGD(groups, lr=optim.backbone_lr, momentum=optim.backbone_momentum,
                           weight_decay=optim.backbone_weight_decay)


@dataclass
class LoadedModel:
    """A checkpoint's model on the CPU in eval mode, with the config and classes it runs with."""

    model: nn.Module
    config: Config
    benchmark: Benchmark
    state: dict


def load_method_model(checkpoint: str | Path, config_path: str | Path | None = None,
                      overrides: Sequence[str] = ()) -> LoadedModel:
    """Rebuild and load any method's checkpoint. The architecture (`model`, `baseline`) always
    comes from the checkpoint; `config_path` / `overrides` may change the data and evaluation
    settings (another dataset root, `eval.protocol=original`, ...)."""
    state = load_checkpoint(checkpoint)
    stored = config_from_dict(state["config"])
    config = load_config(config_path, overrides) if config_path else \
        config_from_dict(state["config"], overrides)
    config.model, config.baseline = stored.model, stored.baseline
    benchmark = build_benchmark(config)
    if state.get("class_names") != benchmark.split.model_class_names:
        raise CheckpointError(f"{checkpoint} was trained for classes {state.get('class_names')},"
                              f" but its config names {benchmark.split.model_class_names} "
                              "(seen then unseen)")
    model = build_method_model(config, benchmark.class_embeddings, benchmark.split.num_seen)
    load_model_state(model, state, checkpoint)
    model.eval()
    return LoadedModel(model, config, benchmark, state)
