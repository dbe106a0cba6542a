"""Typed configuration: nested dataclasses, YAML recipes, `--set a.b=value` overrides.

A recipe is a YAML file whose keys mirror the dataclasses below. A recipe may start with
`inherit: other.yaml` (a path relative to the recipe) to reuse another recipe and change only a
few values; overrides given on the command line are applied last. Unknown keys and values of the
wrong type are rejected with a `ConfigError` that names the key and the expected type. The
defaults are the paper's Pascal-VOC step-1 configuration (method.md).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cagnet.errors import ConfigError


@dataclass
class DataConfig:
    """Where the dataset lives and how training / test samples are prepared (method.md §4)."""

    root: str = "datasets/VOCdevkit/VOC2012"
    class_names: str = "data/voc12/class_names.txt"
    split: str = "data/voc12/split_spnet.yaml"
    train_list: str = "ImageSets/Segmentation/train.txt"
    val_list: str = "ImageSets/Segmentation/val.txt"
    image_dir: str = "JPEGImages"
    label_dir: str = "SegmentationClass"
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    warp_size: int = 513
    crop_size: int = 368
    scale_min: float = 0.5
    scale_max: float = 1.5
    flip: bool = True
    mean_bgr: list[float] = field(default_factory=lambda: [104.008, 116.669, 122.675])
    num_workers: int = 2
    on_bad_sample: str = "error"


@dataclass
class EmbeddingConfig:
    """The class-embedding matrix (`cagnet embed` output): one row per class id."""

    path: str = "embeddings/voc12_fastnvec.npy"


@dataclass
class ModelConfig:
    """Network shapes (method.md §1) and the switches for the original code's quirks."""

    blocks_per_stage: list[int] = field(default_factory=lambda: [3, 4, 23, 3])
    base_width: int = 64
    aspp_dilations: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    context_channels: int = 256
    context_dilations: list[int] = field(default_factory=lambda: [1, 2, 5])
    generator_hidden: list[int] = field(default_factory=lambda: [1024, 960, 864, 784, 720])
    generator_dropout: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.3, 0.5, 0.5])
    discriminator_hidden: int = 1024
    discriminator_dropout: float = 0.5
    train_scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.75])
    relu_before_selector: bool = True
    relu_on_logvar: bool = True
    train_selector: bool = False
    extra_logit: bool = True
    init: str = ""


@dataclass
class LossConfig:
    """Loss kinds and coefficients (method.md §2). Defaults: VOC step 1."""

    adversarial: str = "l1"
    content: str = "mmd"
    mmd_grouping: str = "class"
    mmd_sigmas: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0, 20.0, 40.0, 60.0])
    mmd_max_pixels_per_class: int = 0
    gradient_penalty: float = 10.0
    kl: float = 100.0
    backbone_cls_real: float = 0.5
    generator_adversarial: float = 1.0
    generator_content: float = 50.0
    generator_cls_fake: float = 0.0
    discriminator_adversarial: float = 1.0
    discriminator_cls_real: float = 1.0
    discriminator_cls_fake: float = 0.0
    step2_discriminator_cls_fake: float = 0.125
    step2_generator_cls_fake: float = 0.0


@dataclass
class DecayConfig:
    """Step decay: factor 1 before `start`, then gamma ** ((t - start) // step + 1)."""

    start: int = 10000
    step: int = 5000
    gamma: float = 0.71


@dataclass
class OptimConfig:
    """Optimisers and learning rates (method.md §3.3)."""

    backbone_lr: float = 2.5e-4
    backbone_momentum: float = 0.9
    backbone_weight_decay: float = 5e-4
    poly_power: float = 0.9
    poly_refresh: int = 10
    lr_mult_trunk: float = 1.0
    lr_mult_context: float = 5.0
    lr_mult_aspp_weight: float = 10.0
    lr_mult_aspp_bias: float = 20.0
    discriminator_lr: float = 2.5e-4
    discriminator_weight_decay: float = 5e-4
    generator_lr: float = 2e-4
    generator_weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    discriminator_decay: DecayConfig = field(default_factory=DecayConfig)
    generator_decay: DecayConfig = field(default_factory=DecayConfig)


@dataclass
class TrainConfig:
    """The training loop. `stage: step1` trains everything on seen classes; `stage: finetune`
    freezes the backbone and alternates step-1 and step-2 iterations (method.md §3.2)."""

    stage: str = "step1"
    iterations: int = 40000
    batch_size: int = 8
    mixed_period: int = 100
    gen_unseen_rate: float = 9.0
    log_interval: int = 20
    eval_interval: int = 0
    checkpoint_interval: int = 1000
    max_nonfinite_steps: int = 5
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "none"
    threads: int = 0


@dataclass
class EvalConfig:
    """Evaluation. `protocol: full` upsamples logits to the label's original resolution (the
    honest default); `protocol: original` compares against labels nearest-downsampled to the
    feature grid, as the original CaGNet code does. Both warp the test image to `warp_size`."""

    protocol: str = "full"
    warp_size: int = 513
    batch_size: int = 1
    max_images: int = 0


@dataclass
class PretrainConfig:
    """Image-level classification pretraining of the backbone trunk (`cagnet pretrain`): the
    shapes benchmark's stand-in for ImageNet initialisation."""

    corpus: str = ""
    image_size: int = 64
    iterations: int = 1000
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class Config:
    """A whole run: one recipe in `experiments/` resolved with its overrides."""

    name: str = "voc12"
    data: DataConfig = field(default_factory=DataConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.on_bad_sample": ("error", "skip"),
    "loss.adversarial": ("l1", "lsgan", "gan", "wgan_gp"),
    "loss.content": ("mmd", "l1", "mse"),
    "loss.mmd_grouping": ("class", "raster_runs"),
    "train.stage": ("step1", "finetune"),
    "train.amp": ("none", "bf16", "fp16"),
    "eval.protocol": ("full", "original"),
}


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a recipe (or the defaults when `path` is None), apply `key=value` overrides,
    check every key and type, and validate the values."""
    raw: dict[str, Any] = _read_recipe(Path(path)) if path is not None else {}
    for override in overrides:
        key, value = _parse_override(override)
        _set_nested(raw, key, value)
    config = _build(Config, raw, prefix="")
    validate(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Rebuild a config from `config_to_dict` output (e.g. from a checkpoint), apply
    `key=value` overrides, and check it."""
    raw = copy.deepcopy(values)
    for override in overrides:
        key, value = _parse_override(override)
        _set_nested(raw, key, value)
    config = _build(Config, raw, prefix="")
    validate(config)
    return config


def dump_config(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config atomically as YAML."""
    from cagnet.utils.io import atomic_write_text

    return atomic_write_text(path, dump_config(config))


def validate(config: Config) -> None:
    """Reject values that are well-typed but impossible, naming the key and what was expected."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    positive = {
        "data.warp_size": config.data.warp_size, "data.crop_size": config.data.crop_size,
        "train.iterations": config.train.iterations, "train.batch_size": config.train.batch_size,
        "train.mixed_period": config.train.mixed_period,
        "train.log_interval": config.train.log_interval,
        "train.checkpoint_interval": config.train.checkpoint_interval,
        "train.max_nonfinite_steps": config.train.max_nonfinite_steps,
        "model.base_width": config.model.base_width,
        "model.context_channels": config.model.context_channels,
        "model.discriminator_hidden": config.model.discriminator_hidden,
        "eval.warp_size": config.eval.warp_size, "eval.batch_size": config.eval.batch_size,
        "pretrain.image_size": config.pretrain.image_size,
        "pretrain.iterations": config.pretrain.iterations,
        "pretrain.batch_size": config.pretrain.batch_size,
        "optim.poly_refresh": config.optim.poly_refresh,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: expected a positive number, got {value}")
    if config.data.crop_size > config.data.warp_size * config.data.scale_max:
        raise ConfigError(
            f"data.crop_size ({config.data.crop_size}) is larger than the largest scaled warp "
            f"(data.warp_size {config.data.warp_size} x data.scale_max {config.data.scale_max}): "
            "every crop would be mostly padding; expected crop_size <= warp_size * scale_max")
    if not 0 < config.data.scale_min <= config.data.scale_max:
        raise ConfigError(f"data.scale_min/scale_max: expected 0 < min <= max, got "
                          f"{config.data.scale_min} and {config.data.scale_max}")
    if len(config.data.mean_bgr) != 3:
        raise ConfigError(f"data.mean_bgr: expected 3 values (B, G, R), got {config.data.mean_bgr}")
    if len(config.model.blocks_per_stage) != 4 or min(config.model.blocks_per_stage) < 1:
        raise ConfigError("model.blocks_per_stage: expected 4 positive block counts "
                          f"(res2..res5), got {config.model.blocks_per_stage}")
    if len(config.model.generator_hidden) != len(config.model.generator_dropout):
        raise ConfigError("model.generator_dropout: expected one rate per generator_hidden layer "
                          f"({len(config.model.generator_hidden)}), got "
                          f"{len(config.model.generator_dropout)}")
    for key, rates in (("model.generator_dropout", config.model.generator_dropout),
                       ("model.discriminator_dropout", [config.model.discriminator_dropout])):
        if any(not 0.0 <= rate < 1.0 for rate in rates):
            raise ConfigError(f"{key}: expected rates in [0, 1), got {rates}")
    if not config.model.train_scales or config.model.train_scales[0] != 1.0:
        raise ConfigError("model.train_scales: expected a list starting with 1.0, got "
                          f"{config.model.train_scales}")
    if any(not math.isfinite(s) or s <= 0 for s in config.model.train_scales):
        raise ConfigError(f"model.train_scales: expected positive scales, got "
                          f"{config.model.train_scales}")
    if len(config.optim.adam_betas) != 2:
        raise ConfigError(f"optim.adam_betas: expected 2 values, got {config.optim.adam_betas}")
    for name in ("discriminator_decay", "generator_decay"):
        decay = getattr(config.optim, name)
        if decay.step <= 0 or decay.start < 0:
            raise ConfigError(f"optim.{name}: expected start >= 0 and step > 0, got "
                              f"start {decay.start}, step {decay.step}")
    if config.train.gen_unseen_rate < 0:
        raise ConfigError(f"train.gen_unseen_rate: expected >= 0, got {config.train.gen_unseen_rate}")
    if config.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: expected >= 0, got {config.data.num_workers}")


# ---------------------------------------------------------------------------------------------
# Reading and type checking


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'inherit' forms a cycle")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if content is None:
        content = {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"got {type(content).__name__}")
    parent = content.pop("inherit", None)
    if parent is None:
        return content
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'inherit' expects a file name, got {parent!r}")
    base = _read_recipe(path.parent / parent, seen + (path.resolve(),))
    return _merge(base, content)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"override {text!r}: expected the form section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_nested(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted_key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, values: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s}; valid keys in {where}: "
                          f"{', '.join(names)}")
    arguments = {}
    for name in names:
        if name in values:
            arguments[name] = _check(hints[name], values[name], f"{prefix}{name}")
    instance = cls(**arguments)
    return instance


def _check(expected: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(expected):
        return _build(expected, value if value is not None else {}, key + ".")
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {item_type.__name__}, got {value!r}")
        return [_check(item_type, item, f"{key}[{index}]") for index, item in enumerate(value)]
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r} "
                      f"({type(value).__name__})")
