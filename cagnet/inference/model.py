"""Rebuild a trained model from a checkpoint alone, for prediction and class extension.

Unlike `cagnet eval`, nothing here reads the dataset, the split file or the embedding file: the
class list, the number of seen classes and the class-embedding matrix all come from the
checkpoint (the model's `class_embeddings` buffer), so a checkpoint extended with new classes
by `cagnet extend` works exactly like one straight out of training. The architecture comes from
the checkpoint's stored config (`model` and `baseline` sections: CaGNet, SPNet or ZS3Net); a
model built around a custom trunk in Python (`cagnet.models.trunks`) is rebuilt by its own
code and passed to `cagnet.inference.predict` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cagnet.baselines.methods import build_method_model
from cagnet.config import Config, config_from_dict
from cagnet.engine.checkpoint import load_checkpoint, load_model_state
from cagnet.errors import CheckpointError


@dataclass
class InferenceModel:
    """A trained model in eval mode, with what prediction needs to know about its classes.

    `tags[k]` is "seen" for k < num_seen, "added" for classes added by `cagnet extend` (they
    are unseen classes too), and "unseen" otherwise.
    """

    model: torch.nn.Module
    config: Config
    class_names: list[str]
    num_seen: int
    added_classes: list[str]
    device: torch.device

    @property
    def tags(self) -> list[str]:
        added = set(self.added_classes)
        return ["seen" if index < self.num_seen else "added" if name in added else "unseen"
                for index, name in enumerate(self.class_names)]


def model_from_state(state: dict, source: str | Path = "checkpoint") -> tuple[torch.nn.Module,
                                                                              Config]:
    """Build the model described by a loaded checkpoint dict (any `baseline.method`: CaGNet,
    SPNet, ZS3Net) and load its weights (CPU).

    Raises CheckpointError naming `source` when the class list, the embedding buffer and the
    weights disagree.
    """
    config = config_from_dict(state["config"])
    weights = state.get("model", {})
    embeddings = weights.get("class_embeddings")
    class_names = list(state.get("class_names") or [])
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise CheckpointError(f"{source}: the model has no (K, E) 'class_embeddings' buffer")
    if embeddings.shape[0] != len(class_names):
        raise CheckpointError(f"{source}: {len(class_names)} class names but "
                              f"{embeddings.shape[0]} class-embedding rows")
    model = build_method_model(config, embeddings.numpy(), int(state["num_seen"]))
    load_model_state(model, state, source)
    return model, config


def load_inference_model(checkpoint: str | Path, device: torch.device) -> InferenceModel:
    """Load `checkpoint` onto `device` in eval mode."""
    state = load_checkpoint(checkpoint)
    model, config = model_from_state(state, checkpoint)
    model.to(device).eval()
    extension = (state.get("extra") or {}).get("extension") or {}
    return InferenceModel(model, config, list(state["class_names"]), int(state["num_seen"]),
                          list(extension.get("added_classes", [])), device)
