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
import re
import sys
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
    # Padding of a down-scaled image before the crop: "centred" to max(warp, crop) (the
    # original release) or "bottom_right" to the crop size.
    padding: str = "centred"
    mean_bgr: list[float] = field(default_factory=lambda: [104.008, 116.669, 122.675])
    num_workers: int = 2
    on_bad_sample: str = "error"
    # Periodic validation images: an id list, or that many training ids held out (seeded,
    # removed from training). Never the test list (val_list).
    validation_list: str = ""
    validation_holdout: int = 0
    # Raw mask values renamed on load, e.g. {11: 255} for a dataset that marks void as 11.
    label_map: dict[int, int] = field(default_factory=dict)
    # Where labels come from (cagnet/datasets/benchmarks.py): "folders" = index PNGs in
    # label_dir; "voc_sbd" = VOC PNG in label_dir, else the SBD `cls/<id>.mat` under sbd_root;
    # "context_mat" = Pascal-Context 459-label `.mat` files in label_dir, mapped by name through
    # label_names (labels.txt); "cocostuff" = PNGs, with the id lists derived from the
    # folders when the list file is absent.
    layout: str = "folders"
    sbd_root: str = ""
    label_names: str = ""
    # ZS3Net protocol: remove training images that contain any unseen-class pixel.
    drop_images_with_unseen: bool = False
    # Self-training only (cagnet/baselines/pseudo_labels.py writes it): a folder of
    # `<id>.png` training labels in dataset ids, pseudo-labelled unseen pixels included. When
    # set, training labels come from there and unseen ids map to their model index S..S+U-1;
    # empty (the default) keeps the protocol: no unseen label value reaches a loss.
    pseudo_label_dir: str = ""


@dataclass
class EmbeddingConfig:
    """The class-embedding matrix (`cagnet embed` output): one row per class id."""

    path: str = "embeddings/voc12_fastnvec.npy"


@dataclass
class ModelConfig:
    """Network shapes (method.md §1) and the switches for the original code's quirks."""

    # The trunk under the ASPP (cagnet/models/trunks.py): deeplabv2_resnet101 (sized by
    # blocks_per_stage / base_width), torchvision:<name>, timm:<name> or
    # python:<module or file.py>:<callable>; its weights (none, default = the library's, or a
    # local file), feature endpoint, output stride and input normalisation (auto: caffe for
    # DeepLab-v2, imagenet otherwise; or caffe, imagenet, centred).
    trunk: str = "deeplabv2_resnet101"
    pretrained: str = "none"
    trunk_endpoint: str = ""
    output_stride: int = 8
    normalization: str = "auto"
    # Width of the pixel features (ASPP output, latent code, generated features, classifier
    # input), whatever the class-embedding dimension is; 600 in the paper.
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
    # The generator's latent input in step 1: the contextual code ("context", the method) or
    # N(0, I) noise ("noise": an ablation that removes the context from generation).
    generator_latent: str = "context"
    init: str = ""


@dataclass
class LossConfig:
    """Loss kinds and coefficients (method.md §2). Defaults: VOC step 1."""

    adversarial: str = "l1"
    content: str = "mmd"
    # The original: runs of one label in raster order, half the biased MMD^2 (method.md §2).
    mmd_grouping: str = "raster_runs"
    mmd_estimator: str = "original"
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
    # "original": the discriminator steps first, the generator and backbone losses are then
    # back-propagated through the updated one; "simultaneous": all at the same weights.
    update_order: str = "original"


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
    # The original's step 2 also steps, with zero gradients, what its loss does not reach
    # (the generator, the adversarial head): Adam still moves them (engine/steps.py).
    step2_zero_gradient_steps: bool = True
    log_interval: int = 20
    # Validation every eval_interval iterations (0 = never) on data.validation_list or
    # data.validation_holdout images, never the test list; best.pt maximises best_metric
    # (miou_seen needs no unseen label: the others read unseen labels of held-out images).
    eval_interval: int = 0
    best_metric: str = "miou_seen"
    checkpoint_interval: int = 1000
    max_nonfinite_steps: int = 5
    # After max_nonfinite_steps non-finite losses in a row: "stop" (TrainingError) or
    # "rollback" to the last good checkpoint with every learning rate x rollback_lr_factor
    # (at most max_rollbacks times). See cagnet/engine/faults.py.
    on_nonfinite: str = "stop"
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    # Mixed precision: "none" | "bf16" | "fp16" (fp16 adds a GradScaler); loss terms stay fp32.
    amp: str = "none"
    # NHWC memory format for images and conv weights; torch.compile of the backbone forward.
    channels_last: bool = False
    compile: bool = False
    threads: int = 0


@dataclass
class EvalConfig:
    """Evaluation. `protocol: full` upsamples logits to the label's original resolution (the
    honest default); `protocol: original` compares against labels nearest-downsampled to the
    feature grid, as the original CaGNet code does. Both warp the test image to `warp_size`;
    every report gives both, `protocol` is the primary one (model selection)."""

    protocol: str = "full"
    warp_size: int = 513
    batch_size: int = 1
    max_images: int = 0
    # Test-time augmentation: logits averaged over these input scales (and their horizontal
    # flips) on the scale-1 feature grid. Off by default; stated in the report when on.
    tta: bool = False
    tta_scales: list[float] = field(default_factory=lambda: [0.75, 1.0, 1.25])
    tta_flip: bool = True
    # > 0: also score pixels whose max softmax probability is below it as "no class"
    # (min_confidence.json; never changes the main scores).
    min_confidence: float = 0.0
    # NHWC weights and images in `cagnet eval` / `predict` (faster on CPU, bench numbers).
    channels_last: bool = True


@dataclass
class PretrainConfig:
    """Image-level classification pretraining of the backbone trunk (`cagnet pretrain`): the
    shapes benchmark's stand-in for ImageNet initialisation."""

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
    """ZS3Net (method.md §7): the GMMN generator and the retrained classifier. The classifier
    is the CaGNet discriminator's trunk + cls head; its optimiser is `optim.discriminator_*`."""

    hidden: int = 256
    dropout: float = 0.5
    mmd_sigmas: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0, 20.0, 40.0, 80.0])
    pixels_per_class: int = 128
    generator_iterations: int = 2000
    generator_lr: float = 2e-4
    classifier_iterations: int = 2000
    unseen_weight: float = 100.0
    # Generated pixels per unseen class in each classifier batch; 0 = as many as the average
    # seen class has real labelled pixels in that batch.
    generated_pixels_per_class: int = 0


@dataclass
class BaselineConfig:
    """Which network a run trains and a checkpoint holds (cagnet/baselines/methods.py):
    `cagnet`, `spnet` or `zs3net` (a CaGNet model whose classifier ZS3Net retrained)."""

    method: str = "cagnet"
    zs3net: Zs3NetConfig = field(default_factory=Zs3NetConfig)


@dataclass
class SelfTrainingConfig:
    """Pseudo-labelling of ignored training pixels (method.md §5, cagnet/baselines).

    `top_p` (CaGNet): a pixel gets the best-ranked unseen class when one is among its top_p
    predictions (released CaGNet ST configs: VOC 1, Context 16, COCO-Stuff 1). `top_percent`
    (ZS3Net): per image, the top_percent % most confident pixels predicted as unseen.
    `labelling`: "online" (the original: each batch labelled by the current model) or
    "offline" (once, into `data.pseudo_label_dir`). `zero_embedding_for_pseudo_labels`: the
    original's quirk, a zero generator condition for pseudo-labelled pixels in step 1."""

    top_p: int = 1
    top_percent: float = 75.0
    labelling: str = "online"
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


CHOICES: dict[str, tuple[str, ...]] = {
    "data.padding": ("centred", "bottom_right"),
    "train.best_metric": ("miou_seen", "hiou", "miou"),
    "self_training.labelling": ("online", "offline"),
    "data.on_bad_sample": ("error", "skip"),
    "data.layout": ("folders", "voc_sbd", "context_mat", "cocostuff"),
    "loss.adversarial": ("l1", "lsgan", "gan", "wgan_gp"),
    "loss.content": ("mmd", "l1", "mse"),
    "loss.mmd_grouping": ("class", "raster_runs"),
    "loss.mmd_estimator": ("biased", "original"),
    "loss.update_order": ("original", "simultaneous"),
    "model.generator_latent": ("context", "noise"),
    "model.normalization": ("auto", "caffe", "imagenet", "centred"),
    "train.stage": ("step1", "finetune"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.on_nonfinite": ("stop", "rollback"),
    "eval.protocol": ("full", "original"),
    "baseline.method": ("cagnet", "spnet", "zs3net"),
}


# Where recipes live: the source checkout's experiments/, and the copy `pip install` puts in
# <prefix>/share/cagnet/experiments.
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
    raw: dict[str, Any] = _read_recipe(find_recipe(path)) if path is not None else {}
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
        "model.feature_dim": config.model.feature_dim,
        "eval.warp_size": config.eval.warp_size, "eval.batch_size": config.eval.batch_size,
        "pretrain.image_size": config.pretrain.image_size,
        "pretrain.iterations": config.pretrain.iterations,
        "pretrain.batch_size": config.pretrain.batch_size,
        "optim.poly_refresh": config.optim.poly_refresh,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: expected a positive number, got {value}")
    if config.data.crop_size > config.data.warp_size:
        # The warped image at scale 1 must hold a whole crop; padding (label 255) only comes
        # from down-scaling, as in DeepLab. A larger crop is almost always a swapped pair.
        raise ConfigError(
            f"data.crop_size ({config.data.crop_size}) is larger than data.warp_size "
            f"({config.data.warp_size}): expected crop_size <= warp_size (the crop is cut from "
            "the image warped to warp_size x warp_size, then scaled)")
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
    if not config.eval.tta_scales or any(not s > 0 for s in config.eval.tta_scales):
        raise ConfigError("eval.tta_scales: expected a non-empty list of positive scales, got "
                          f"{config.eval.tta_scales}")
    if not 0.0 <= config.eval.min_confidence < 1.0:
        raise ConfigError("eval.min_confidence: expected a probability in [0, 1) (0 = off), "
                          f"got {config.eval.min_confidence}")
    _validate_numbers(config)
    _validate_baselines(config)
    if config.train.gen_unseen_rate < 0:
        raise ConfigError(f"train.gen_unseen_rate: expected >= 0, got {config.train.gen_unseen_rate}")
    if config.train.eval_interval and not (config.data.validation_list
                                           or config.data.validation_holdout):
        raise ConfigError("train.eval_interval: periodic validation needs its own images "
                          "(data.validation_list, or data.validation_holdout training ids), "
                          "never the test list")
    if config.data.validation_list and config.data.validation_list == config.data.val_list:
        raise ConfigError("data.validation_list: the validation images must not be the test "
                          f"list ({config.data.val_list})")
    if any(not (0 <= old <= 255 and 0 <= new <= 255) for old, new
           in config.data.label_map.items()):
        raise ConfigError(f"data.label_map: expected mask values 0..255 on both sides, got "
                          f"{config.data.label_map}")
    if config.data.validation_holdout < 0:
        raise ConfigError(f"data.validation_holdout: expected >= 0, got "
                          f"{config.data.validation_holdout}")
    if config.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: expected >= 0, got {config.data.num_workers}")
    if config.data.layout == "voc_sbd" and not config.data.sbd_root:
        raise ConfigError("data.sbd_root: data.layout voc_sbd needs the SBD folder "
                          "(benchmark_RELEASE or benchmark_RELEASE/dataset, holding cls/<id>.mat)")
    if config.data.layout == "context_mat" and config.data.label_suffix != ".mat":
        raise ConfigError("data.label_suffix: data.layout context_mat reads the 459-label "
                          f"'.mat' files; expected '.mat', got {config.data.label_suffix!r}")


def _validate_baselines(config: Config) -> None:
    """Ranges of the `baseline` and `self_training` sections."""
    zs3net = config.baseline.zs3net
    for key in ("hidden", "pixels_per_class", "generator_iterations", "classifier_iterations"):
        if getattr(zs3net, key) <= 0:
            raise ConfigError(f"baseline.zs3net.{key}: expected a positive number, got "
                              f"{getattr(zs3net, key)}")
    if not 0.0 <= zs3net.dropout < 1.0:
        raise ConfigError(f"baseline.zs3net.dropout: expected a rate in [0, 1), got "
                          f"{zs3net.dropout}")
    if zs3net.generated_pixels_per_class < 0 or zs3net.unseen_weight <= 0 \
            or zs3net.generator_lr < 0 or not zs3net.mmd_sigmas \
            or min(zs3net.mmd_sigmas) <= 0:
        raise ConfigError("baseline.zs3net: expected generated_pixels_per_class >= 0, "
                          "unseen_weight > 0, generator_lr >= 0 and positive mmd_sigmas, got "
                          f"{zs3net.generated_pixels_per_class}, {zs3net.unseen_weight}, "
                          f"{zs3net.generator_lr}, {zs3net.mmd_sigmas}")
    if config.self_training.top_p < 1:
        raise ConfigError(f"self_training.top_p: expected >= 1, got {config.self_training.top_p}")
    if not 0.0 < config.self_training.top_percent <= 100.0:
        raise ConfigError("self_training.top_percent: expected a percentage in (0, 100], got "
                          f"{config.self_training.top_percent}")


def _non_finite_floats(node: Any, prefix: str) -> list[str]:
    """Dotted keys of every NaN / Inf float in a config (sub)tree."""
    if dataclasses.is_dataclass(node):
        return [key for item in dataclasses.fields(node)
                for key in _non_finite_floats(getattr(node, item.name), f"{prefix}{item.name}.")]
    values = node if isinstance(node, list) else [node]
    bad = any(isinstance(value, float) and not math.isfinite(value) for value in values)
    return [prefix.rstrip(".")] if bad else []


def _validate_numbers(config: Config) -> None:
    """Finite floats everywhere; ranges the optimisers and the fault policy require."""
    bad = _non_finite_floats(config, "")
    if bad:
        raise ConfigError(f"{bad[0]}: expected a finite number, got NaN or Inf")
    optim = config.optim
    for key in ("backbone_lr", "discriminator_lr", "generator_lr", "backbone_weight_decay",
                "discriminator_weight_decay", "generator_weight_decay", "poly_power"):
        if getattr(optim, key) < 0:
            raise ConfigError(f"optim.{key}: expected >= 0, got {getattr(optim, key)}")
    if not 0 <= optim.backbone_momentum < 1:
        raise ConfigError(f"optim.backbone_momentum: expected a value in [0, 1), got "
                          f"{optim.backbone_momentum}")
    if any(not 0 <= beta < 1 for beta in optim.adam_betas):
        raise ConfigError(f"optim.adam_betas: expected two values in [0, 1), got "
                          f"{optim.adam_betas}")
    if not 0 < config.train.rollback_lr_factor < 1:
        raise ConfigError("train.rollback_lr_factor: expected a factor in (0, 1), got "
                          f"{config.train.rollback_lr_factor}")
    if config.train.max_rollbacks < 0:
        raise ConfigError(f"train.max_rollbacks: expected >= 0, got {config.train.max_rollbacks}")
    for key in ("aspp_dilations", "context_dilations", "generator_hidden"):
        values = getattr(config.model, key)
        if (not values and key != "generator_hidden") or any(value < 1 for value in values):
            raise ConfigError(f"model.{key}: expected a list of positive integers"
                              f"{'' if key == 'generator_hidden' else ' (at least one)'}, "
                              f"got {values}")


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
    except (yaml.YAMLError, RecursionError):
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
    unknown = sorted(str(key) for key in set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys in {where}: "
                          f"{', '.join(names)}")
    arguments = {}
    for name in names:
        if name in values:
            arguments[name] = _check(hints[name], values[name], f"{prefix}{name}")
    instance = cls(**arguments)
    return instance


_FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check(expected: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(expected):
        return _build(expected, value if value is not None else {}, key + ".")
    origin = typing.get_origin(expected)
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
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, int) and not isinstance(value, bool) \
                and abs(value) > 2 ** 1023:
            raise ConfigError(f"{key}: expected a float, got an integer too large for one")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_PATTERN.fullmatch(value.strip()):
            # YAML 1.1 reads exponent floats without a dot ("1e-4") as strings.
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r} "
                      f"({type(value).__name__})")
