"""Builders: the only place where config values become objects.

Each builder reads the config sections it needs and passes plain values to the components
(datasets, models, losses never see the config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cagnet.config import Config, DataConfig, ModelConfig
from cagnet.errors import ConfigError, DataError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str, root: str | Path | None = None) -> Path:
    """Resolve a path from the config: absolute as given; otherwise relative to the dataset
    root (when given and the file exists there), then to the working directory, then to the
    project folder (for the class lists and splits shipped in `data/`)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in ([Path(root)] if root else []) + [Path.cwd(), PROJECT_ROOT]:
        if (base / candidate).exists():
            return base / candidate
    return candidate


@dataclass
class Benchmark:
    """Everything that describes the classes of a run."""

    split: "ClassSplit"  # noqa: F821 (imported lazily)
    class_embeddings: np.ndarray  # (K, E) in model class order (seen then unseen)
    embedding_metadata: dict
    embedding_path: Path


def build_benchmark(config: Config) -> Benchmark:
    """Class names, split and the class-embedding rows in model order."""
    from cagnet.class_embeddings import load_class_embeddings
    from cagnet.datasets.splits import read_class_names, read_split

    class_names = read_class_names(resolve_path(config.data.class_names, config.data.root))
    split = read_split(resolve_path(config.data.split, config.data.root), class_names)
    embedding_path = resolve_path(config.embeddings.path, config.data.root)
    matrix, metadata = load_class_embeddings(embedding_path, expected_rows=len(class_names))
    rows = np.asarray(matrix, dtype=np.float32)[list(split.model_ids)]
    return Benchmark(split, rows, metadata, embedding_path)


def build_model(model: ModelConfig, class_embeddings: np.ndarray, num_seen: int
                ) -> torch.nn.Module:
    """The composed CaGNet. The embedding, latent and feature dimensions all come from the
    embedding matrix, never from a constant."""
    from cagnet.models import CaGNet, ContextualModule, DeepLabV2, Discriminator, Generator

    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    embed_dim = embeddings.shape[1]
    backbone = DeepLabV2(blocks_per_stage=tuple(model.blocks_per_stage),
                         base_width=model.base_width, embed_dim=embed_dim,
                         aspp_dilations=tuple(model.aspp_dilations))
    context = ContextualModule(embed_dim=embed_dim, hidden_channels=model.context_channels,
                               dilations=tuple(model.context_dilations),
                               relu_before_selector=model.relu_before_selector,
                               relu_on_logvar=model.relu_on_logvar)
    if not model.train_selector:
        # Quirk of the original: the scale selector is in no optimiser group, so it keeps its
        # initial weights. Making it non-trainable states that explicitly.
        context.selector.requires_grad_(False)
    generator = Generator(embed_dim=embed_dim, latent_dim=embed_dim, feature_dim=embed_dim,
                          hidden_dims=tuple(model.generator_hidden),
                          dropouts=tuple(model.generator_dropout))
    discriminator = Discriminator(feature_dim=embed_dim, hidden_dim=model.discriminator_hidden,
                                  num_classes=embeddings.shape[0],
                                  extra_logit=model.extra_logit,
                                  dropout=model.discriminator_dropout)
    return CaGNet(backbone, context, generator, discriminator, embeddings, num_seen,
                  train_scales=tuple(model.train_scales))


def load_backbone_init(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load an init checkpoint (`cagnet pretrain` output) into the backbone. Every key in the
    file must exist in the backbone with the same shape; backbone keys the file lacks (the
    ASPP, for an image-level pretrained trunk) keep their Kaiming init. Returns those keys."""
    from cagnet.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.init: init checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(f"init checkpoint {path} is corrupt or unsafe: {error}") from None
    weights = state.get("backbone") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'backbone' state dict "
                              "(the output of `cagnet pretrain`)")
    target = model.backbone.state_dict()
    problems = [f"{key} (not in the backbone)" for key in weights if key not in target]
    problems += [f"{key} (shape {tuple(value.shape)} vs {tuple(target[key].shape)})"
                 for key, value in weights.items()
                 if key in target and value.shape != target[key].shape]
    if problems:
        raise CheckpointError(f"{path}: init weights do not match the configured backbone: "
                              + "; ".join(problems[:10]))
    model.backbone.load_state_dict(weights, strict=False)
    return sorted(set(target) - set(weights))


def build_datasets(data: DataConfig, split, seed: int, train: bool = True, eval_warp: int = 513):
    """The training dataset (random augmentation) or the test dataset (warp only)."""
    from cagnet.datasets.segmentation import SegmentationDataset
    from cagnet.datasets.splits import read_id_list
    from cagnet.datasets.transforms import EvalTransform, TrainTransform

    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset folder not found: {root}")
    mean = tuple(data.mean_bgr)
    if train:
        ids = read_id_list(resolve_path(data.train_list, root))
        transform = TrainTransform(mean, data.warp_size, data.crop_size, data.scale_min,
                                   data.scale_max, data.flip)
        lookup = split.train_lookup()
    else:
        ids = read_id_list(resolve_path(data.val_list, root))
        transform = EvalTransform(mean, eval_warp)
        lookup = split.test_lookup()
    return SegmentationDataset(root, ids, data.image_dir, data.label_dir, data.image_suffix,
                               data.label_suffix, lookup, split.known_ids(), transform,
                               seed=seed, on_bad_sample=data.on_bad_sample)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}; expected auto, cpu, cuda, "
                          "cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    return device
