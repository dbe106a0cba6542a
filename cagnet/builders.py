"""Builders: the only place where config values become objects.

Each builder reads the config sections it needs and passes plain values to the components
(datasets, models, losses never see the config).
"""

from __future__ import annotations

import dataclasses
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


def build_model(model: ModelConfig, class_embeddings: np.ndarray, num_seen: int,
                trunk: torch.nn.Module | None = None, trunk_channels: int | None = None
                ) -> torch.nn.Module:
    """The composed CaGNet. The embedding, latent and feature dimensions all come from the
    embedding matrix, never from a constant.

    `trunk` replaces the DeepLab-v2 ResNet (`model.blocks_per_stage` / `base_width` are then
    unused): any module mapping (B, 3, H, W) images to (B, C, h, w) features, with C =
    `trunk_channels` (measured by a dummy forward when None); the ASPP maps C -> E
    (`cagnet.models.trunks.TrunkWithASPP`)."""
    from cagnet.models import CaGNet, ContextualModule, DeepLabV2, Discriminator, Generator

    embeddings = torch.as_tensor(class_embeddings, dtype=torch.float32)
    embed_dim = embeddings.shape[1]
    if trunk is not None:
        from cagnet.models.trunks import TrunkWithASPP

        backbone = TrunkWithASPP(trunk, trunk_channels, embed_dim, tuple(model.aspp_dilations))
    else:
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
    """The training dataset (random augmentation) or the test dataset (warp only), read in
    `data.layout` (cagnet/datasets/benchmarks.py); with `data.drop_images_with_unseen` the
    training ids holding unseen-class pixels are removed (masks read once, here)."""
    from cagnet.datasets import benchmarks
    from cagnet.datasets.transforms import EvalTransform, TrainTransform

    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset folder not found: {root}")
    mean = tuple(data.mean_bgr)
    source = benchmarks.label_source(data, root, split.class_names)
    if train:
        ids = benchmarks.read_image_ids(resolve_path(data.train_list, root), data, root)
        if data.drop_images_with_unseen:
            ids = benchmarks.drop_images_with_unseen(ids, source, split.unseen_ids,
                                                     data.on_bad_sample == "skip",
                                                     max(1, data.num_workers))
        transform = TrainTransform(mean, data.warp_size, data.crop_size, data.scale_min,
                                   data.scale_max, data.flip)
        lookup = split.train_lookup()
        if data.pseudo_label_dir:
            # Self-training: labels from the pseudo-label folder (seen ids, pseudo-labelled
            # unseen ids, 255), with unseen ids -> S..S+U-1. The folder's maps never hold a
            # true unseen label: they were built from the training labels, where it is 255.
            folder = resolve_path(data.pseudo_label_dir)
            if not folder.is_dir():
                raise DataError(f"data.pseudo_label_dir: folder not found: {folder}")
            data = dataclasses.replace(data, layout="folders", label_dir=str(folder.resolve()),
                                       label_suffix=".png")
            source = benchmarks.label_source(data, root, split.class_names)
            lookup = split.test_lookup()
    else:
        ids = benchmarks.read_image_ids(resolve_path(data.val_list, root), data, root)
        transform = EvalTransform(mean, eval_warp)
        lookup = split.test_lookup()
    return benchmarks.make_dataset(data, root, ids, source, lookup, split.known_ids(),
                                   transform, seed)


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


def pretrain_from_config(config: Config, out_path: str | Path, show_progress: bool = True
                         ) -> dict:
    """`cagnet pretrain`: build the configured backbone (its ASPP sized to the embedding file's
    dimension) and pretrain it on `config.pretrain.corpus`; returns the summary."""
    from cagnet.engine.pretrain import pretrain_backbone
    from cagnet.models import DeepLabV2

    if not config.pretrain.corpus:
        raise ConfigError("pretrain.corpus: no corpus folder configured")
    embed_dim = 8
    if config.pretrain.include_aspp:
        from cagnet.class_embeddings import load_class_embeddings

        matrix, _ = load_class_embeddings(resolve_path(config.embeddings.path, config.data.root))
        embed_dim = matrix.shape[1]
    torch.manual_seed(config.train.seed)  # before the build: the initial weights are drawn here
    backbone = DeepLabV2(blocks_per_stage=tuple(config.model.blocks_per_stage),
                         base_width=config.model.base_width, embed_dim=embed_dim,
                         aspp_dilations=tuple(config.model.aspp_dilations))
    pretrain = config.pretrain
    return pretrain_backbone(
        backbone, resolve_path(pretrain.corpus, config.data.root), out_path,
        image_size=pretrain.image_size, iterations=pretrain.iterations,
        batch_size=pretrain.batch_size, lr=pretrain.lr, momentum=pretrain.momentum,
        weight_decay=pretrain.weight_decay, mean_bgr=config.data.mean_bgr, seed=config.train.seed,
        device=resolve_device(config.train.device), include_aspp=pretrain.include_aspp,
        aspp_lr_mult=pretrain.aspp_lr_mult, show_progress=show_progress)
