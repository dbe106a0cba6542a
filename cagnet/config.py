"""Typed configuration: nested dataclasses, YAML recipes (`inherit: other.yaml`, relative to the
recipe), `--set a.b=value` overrides applied last. Unknown keys and wrong types raise a
`ConfigError` naming the key. The defaults are the paper's Pascal-VOC step-1 configuration.
"""

import copy
import dataclasses
import math
import operator
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cagnet.errors import ConfigError
from cagnet.utils.io import atomic_write_text


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
    # Before the crop: "centred" to max(warp, crop) (the original) or "bottom_right" to the crop.
    padding: Literal["centred", "bottom_right"] = "centred"
    mean_bgr: list[float] = field(default_factory=lambda: [104.008, 116.669, 122.675])
    num_workers: int = 2
    on_bad_sample: Literal["error", "skip"] = "error"
    # Periodic validation images: an id list, or that many training ids held out (seeded).
    validation_list: str = ""
    validation_holdout: int = 0
    # Raw mask values renamed on load, e.g. {11: 255} for a dataset that marks void as 11.
    label_map: dict[int, int] = field(default_factory=dict)
    # Where labels come from: folders, voc_sbd, context_mat or cocostuff (datasets/benchmarks.py).
    layout: Literal["folders", "voc_sbd", "context_mat", "cocostuff"] = "folders"
    sbd_root: str = ""
    label_names: str = ""
    # ZS3Net protocol: remove training images that contain any unseen-class pixel.
    drop_images_with_unseen: bool = False
    # Self-training: a folder of pseudo-labelled `<id>.png` training labels (unseen: S..S+U-1).
    pseudo_label_dir: str = ""


@dataclass
class EmbeddingConfig:
    """The class-embedding matrix (`cagnet embed` output): one row per class id."""

    path: str = "embeddings/voc12_fastnvec.npy"


@dataclass
class ModelConfig:
    """Network shapes (method.md §1) and the switches for the original code's quirks."""

    # The trunk under the ASPP (models/trunks.py): deeplabv2_resnet101, torchvision:<name>,
    # timm:<name> or python:<module or file.py>:<callable>; pretrained: none, default or a file.
    trunk: str = "deeplabv2_resnet101"
    pretrained: str = "none"
    trunk_endpoint: str = ""
    output_stride: int = 8
    normalization: Literal["auto", "caffe", "imagenet", "centred"] = "auto"
    # Width of the pixel features (ASPP output, latent code, generated features); 600 in the paper.
    feature_dim: int = 600
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
    # The generator's step-1 latent input: the contextual code, or N(0, I) noise (an ablation).
    generator_latent: Literal["context", "noise"] = "context"
    init: str = ""


@dataclass
class LossConfig:
    """Loss kinds and coefficients (method.md §2). Defaults: VOC step 1."""

    adversarial: Literal["l1", "lsgan", "gan", "wgan_gp"] = "l1"
    content: Literal["mmd", "l1", "mse"] = "mmd"
    # The original: runs of one label in raster order, half the biased MMD^2 (method.md §2).
    mmd_grouping: Literal["class", "raster_runs"] = "raster_runs"
    mmd_estimator: Literal["biased", "original"] = "original"
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
    # "original": the discriminator steps first, the other losses go through the updated one.
    update_order: Literal["original", "simultaneous"] = "original"


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

    stage: Literal["step1", "finetune"] = "step1"
    iterations: int = 40000
    batch_size: int = 8
    mixed_period: int = 100
    gen_unseen_rate: float = 9.0
    # The original's step 2 also Adam-steps what its loss does not reach (zero gradients).
    step2_zero_gradient_steps: bool = True
    log_interval: int = 20
    # Validation every eval_interval iterations (0 = never); best.pt maximises best_metric
    # (only miou_seen needs no unseen label).
    eval_interval: int = 0
    best_metric: Literal["miou_seen", "hiou", "miou"] = "miou_seen"
    checkpoint_interval: int = 1000
    max_nonfinite_steps: int = 5
    # After max_nonfinite_steps non-finite losses in a row: "stop" or "rollback" to the last
    # good checkpoint with learning rates x rollback_lr_factor (engine/faults.py).
    on_nonfinite: Literal["stop", "rollback"] = "stop"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    # Mixed precision: "none" | "bf16" | "fp16" (fp16 adds a GradScaler); loss terms stay fp32.
    amp: Literal["none", "bf16", "fp16"] = "none"
    # NHWC memory format for images and conv weights; torch.compile of the backbone forward.
    channels_last: bool = False
    compile: bool = False
    threads: int = 0


@dataclass
class EvalConfig:
    """Evaluation. `protocol: full` scores at the label's resolution, `original` on labels
    nearest-downsampled to the feature grid (the original code); reports give both."""

    protocol: Literal["full", "original"] = "full"
    warp_size: int = 513
    batch_size: int = 1
    max_images: int = 0
    # Test-time augmentation: logits averaged over these scales (and flips) on the scale-1 grid.
    tta: bool = False
    tta_scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])
    tta_flip: bool = True
    # > 0: also score pixels below this max softmax probability as "no class" (a side report).
    min_confidence: float = 0.0
    # NHWC weights and images in `cagnet eval` / `predict` (faster on CPU, bench numbers).
    channels_last: bool = True


@dataclass
class PretrainConfig:
    """Image-level pretraining of the trunk (`cagnet pretrain`), shapes' stand-in for ImageNet."""

    corpus: str = ""
    include_aspp: bool = True
    aspp_lr_mult: float = 0.1
    image_size: int = 64
    iterations: int = 1000
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass
class Zs3NetConfig:
    """ZS3Net (method.md §7): the GMMN generator and the retrained classifier (the CaGNet
    discriminator's trunk + cls head, optimised with `optim.discriminator_*`)."""

    hidden: int = 256
    dropout: float = 0.5
    mmd_sigmas: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0, 20.0, 40.0, 80.0])
    pixels_per_class: int = 128
    generator_iterations: int = 2000
    generator_lr: float = 2e-4
    classifier_iterations: int = 2000
    unseen_weight: float = 100.0
    # Generated pixels per unseen class per classifier batch; 0 = the mean seen class's count.
    generated_pixels_per_class: int = 0


@dataclass
class BaselineConfig:
    """Which network a run trains and a checkpoint holds (cagnet/baselines/methods.py)."""

    method: Literal["cagnet", "spnet", "zs3net"] = "cagnet"
    zs3net: Zs3NetConfig = field(default_factory=Zs3NetConfig)


@dataclass
class SelfTrainingConfig:
    """Pseudo-labelling of ignored training pixels (method.md §5). `top_p` (CaGNet; released
    configs: VOC 1, Context 16, COCO-Stuff 1): the best unseen class among a pixel's top_p.
    `top_percent` (ZS3Net): the most confident unseen pixels per image. `labelling`: online
    (the original) or offline (into `data.pseudo_label_dir`)."""

    top_p: int = 1
    top_percent: float = 75.0
    labelling: Literal["online", "offline"] = "online"
    # The original's quirk: a zero generator condition for pseudo-labelled pixels in step 1.
    zero_embedding_for_pseudo_labels: bool = True


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
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)


# The checkout's experiments/, then the copy `pip install` puts in <prefix>/share/cagnet.
RECIPE_FOLDERS = (Path(__file__).resolve().parents[1] / "experiments",
                  Path(sys.prefix) / "share" / "cagnet" / "experiments")


def recipe_names() -> dict[str, Path]:
    """Every installed recipe: name (file stem) -> path, the checkout's first."""
    found: dict[str, Path] = {}
    for folder in RECIPE_FOLDERS:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe path as given when it exists, else the installed recipe of that name
    (`voc12`, `voc12.yaml` or `experiments/voc12.yaml` all find experiments/voc12.yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    installed = recipe_names().get(path.name[:-5] if path.name.endswith(".yaml") else path.name)
    if installed is None:
        raise ConfigError(f"config file not found: {path} (neither a file nor an installed "
                          f"recipe; `cagnet recipes` lists them)")
    return installed


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a recipe (a path or an installed recipe's name; the defaults when None), apply
    `key=value` overrides, check every key and type, and validate the values."""
    return _resolve(_read_recipe(find_recipe(path)) if path is not None else {}, overrides)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Rebuild and check a config from `config_to_dict` output, with `key=value` overrides."""
    return _resolve(copy.deepcopy(values), overrides)


def _resolve(raw: dict[str, Any], overrides: typing.Sequence[str]) -> Config:
    for override in overrides:
        _set_nested(raw, *_parse_override(override))
    config = _build(Config, raw, prefix="")
    validate(config)
    return config


def dump_config(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config atomically as YAML."""
    return atomic_write_text(path, dump_config(config))


# Keys whose values must be > 0, >= 0, in [0, 1), or non-empty lists of positive numbers.
_POSITIVE = ("data.warp_size", "data.crop_size", "train.iterations", "train.batch_size",
             "train.mixed_period", "train.log_interval", "train.checkpoint_interval",
             "train.max_nonfinite_steps", "model.base_width", "model.context_channels",
             "model.discriminator_hidden", "model.feature_dim", "eval.warp_size", "eval.batch_size",
             "pretrain.image_size", "pretrain.iterations", "pretrain.batch_size",
             "optim.poly_refresh", "optim.discriminator_decay.step", "optim.generator_decay.step",
             "baseline.zs3net.hidden", "baseline.zs3net.pixels_per_class",
             "baseline.zs3net.generator_iterations", "baseline.zs3net.classifier_iterations",
             "baseline.zs3net.unseen_weight")
_NON_NEGATIVE = ("optim.backbone_lr", "optim.discriminator_lr", "optim.generator_lr",
                 "optim.backbone_weight_decay", "optim.discriminator_weight_decay",
                 "optim.generator_weight_decay", "optim.poly_power",
                 "optim.discriminator_decay.start", "optim.generator_decay.start",
                 "train.max_rollbacks", "train.gen_unseen_rate", "data.validation_holdout",
                 "data.num_workers", "baseline.zs3net.generated_pixels_per_class",
                 "baseline.zs3net.generator_lr")
_UNIT_INTERVAL = ("model.discriminator_dropout", "optim.backbone_momentum",
                  "baseline.zs3net.dropout")
_POSITIVE_LISTS = ("model.train_scales", "model.aspp_dilations", "model.context_dilations",
                   "eval.tta_scales", "baseline.zs3net.mmd_sigmas")
# (key, ok(value, config), what was expected), checked in order; `{config...}` in the
# expectation is filled in from the config.
_RULES = (
    *((key, lambda value, _: value > 0, "a positive number") for key in _POSITIVE),
    *((key, lambda value, _: value >= 0, ">= 0") for key in _NON_NEGATIVE),
    *((key, lambda value, _: 0 <= value < 1, "a value in [0, 1)") for key in _UNIT_INTERVAL),
    *((key, lambda values, _: bool(values) and all(value > 0 for value in values),
       "a non-empty list of positive numbers") for key in _POSITIVE_LISTS),
    ("data.scale_min", lambda low, config: 0 < low <= config.data.scale_max,
     "0 < scale_min <= data.scale_max ({config.data.scale_max})"),
    ("data.mean_bgr", lambda mean, _: len(mean) == 3, "3 values (B, G, R)"),
    ("model.blocks_per_stage", lambda blocks, _: len(blocks) == 4 and min(blocks) >= 1,
     "4 positive block counts (res2..res5)"),
    ("model.generator_dropout",
     lambda rates, config: len(rates) == len(config.model.generator_hidden),
     "one rate per model.generator_hidden layer ({config.model.generator_hidden})"),
    ("model.generator_dropout", lambda rates, _: all(0 <= rate < 1 for rate in rates),
     "rates in [0, 1)"),
    ("model.generator_hidden", lambda widths, _: all(width >= 1 for width in widths),
     "a list of positive integers"),
    ("model.train_scales", lambda scales, _: scales[0] == 1.0, "a list starting with 1.0"),
    ("optim.adam_betas", lambda betas, _: len(betas) == 2, "2 values"),
    ("optim.adam_betas", lambda betas, _: all(0 <= beta < 1 for beta in betas),
     "two values in [0, 1)"),
    ("train.rollback_lr_factor", lambda factor, _: 0 < factor < 1, "a factor in (0, 1)"),
    ("eval.min_confidence", lambda probability, _: 0 <= probability < 1,
     "a probability in [0, 1) (0 = off)"),
    ("self_training.top_p", lambda top_p, _: top_p >= 1, ">= 1"),
    ("self_training.top_percent", lambda percent, _: 0 < percent <= 100,
     "a percentage in (0, 100]"),
    ("data.label_map", lambda mapping, _: all(0 <= old <= 255 and 0 <= new <= 255
                                              for old, new in mapping.items()),
     "mask values 0..255 on both sides"),
    ("train.eval_interval", lambda interval, config: not interval
     or config.data.validation_list or config.data.validation_holdout,
     "0 (off) unless periodic validation has its own images: data.validation_list or "
     "data.validation_holdout training ids, never the test list"),
    ("data.validation_list", lambda ids, config: not ids or ids != config.data.val_list,
     "images other than the test list (data.val_list)"),
    ("data.sbd_root", lambda root, config: root or config.data.layout != "voc_sbd",
     "the SBD folder with data.layout voc_sbd (benchmark_RELEASE or benchmark_RELEASE/dataset, "
     "holding cls/<id>.mat)"),
    ("data.label_suffix", lambda suffix, config: suffix == ".mat"
     or config.data.layout != "context_mat",
     "'.mat' with data.layout context_mat (the 459-label '.mat' files)"),
)


def validate(config: Config) -> None:
    """Reject values that are well-typed but impossible, naming the key and what was expected."""
    # First, since every comparison with NaN is false.
    non_finite = _non_finite_floats(config, "")
    if non_finite:
        raise ConfigError(f"{non_finite[0]}: expected a finite number, got NaN or Inf")
    for key, ok, expected in _RULES:
        value = operator.attrgetter(key)(config)
        if not ok(value, config):
            raise ConfigError(f"{key}: expected {expected.format(config=config)}, got {value!r}")
    # The warped image at scale 1 must hold a whole crop (padding only comes from down-scaling,
    # as in DeepLab): a larger crop is almost always a swapped pair.
    data = config.data
    if data.crop_size > data.warp_size:
        raise ConfigError(f"data.crop_size ({data.crop_size}) is larger than data.warp_size "
                          f"({data.warp_size}): expected crop_size <= warp_size (the crop is cut "
                          "from the image warped to warp_size x warp_size, then scaled)")


def _non_finite_floats(node: Any, prefix: str) -> list[str]:
    """Dotted keys of every NaN / Inf float in a config (sub)tree."""
    if dataclasses.is_dataclass(node):
        return [key for item in dataclasses.fields(node)
                for key in _non_finite_floats(getattr(node, item.name), f"{prefix}{item.name}.")]
    values = node if isinstance(node, list) else [node]
    bad = any(isinstance(value, float) and not math.isfinite(value) for value in values)
    return [prefix.rstrip(".")] if bad else []


# ---------------------------------------------------------------------------------------------
# Reading and type checking


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'inherit' forms a cycle")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error)[:300]})") from None
    content = {} if content is None else content
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"got {type(content).__name__}")
    parent = content.pop("inherit", None)
    if parent is None:
        return content
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'inherit' expects a file name, got {parent!r}")
    return _merge(_read_recipe(path.parent / parent, seen + (path.resolve(),)), content)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def _parse_override(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"override {text!r}: expected the form section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except (yaml.YAMLError, RecursionError):
        parsed = value
    return key.strip(), parsed


def _set_nested(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    *sections, name = dotted_key.split(".")
    node = raw
    for part in sections:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted_key}: {part!r} is a value, not a section")
        node = child
    node[name] = value


def _build(cls: type, values: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a section (mapping), got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(key) for key in set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys in {where}: "
                          f"{', '.join(names)}")
    return cls(**{name: _check(hints[name], values[name], f"{prefix}{name}")
                  for name in names if name in values})


_FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check(expected: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(expected):
        return _build(expected, value if value is not None else {}, key + ".")
    origin = typing.get_origin(expected)
    if origin is Literal:
        value, allowed = _check(str, value, key), typing.get_args(expected)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {item_type.__name__}, got {value!r}")
        return [_check(item_type, item, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        key_type, value_type = typing.get_args(expected)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_check(key_type, item, f"{key} key"): _check(value_type, entry, f"{key}[{item}]")
                for item, entry in value.items()}
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is bool and isinstance(value, bool):
        return value
    if expected is int and number and isinstance(value, int):
        return value
    if expected is float:
        if number and isinstance(value, int) and abs(value) > 2 ** 1023:
            raise ConfigError(f"{key}: expected a float, got an integer too large for one")
        # YAML 1.1 reads exponent floats without a dot ("1e-4") as strings.
        if number or (isinstance(value, str) and _FLOAT_PATTERN.fullmatch(value.strip())):
            return float(value)
    if expected is str and (number or isinstance(value, str)):
        return str(value)
    raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r} "
                      f"({type(value).__name__})")
