"""Learning classes from a few labelled images ("shots") on the frozen network's pixel features:
shots folders, pools of real pixels, `ClassifierFinetune` (generated features + class-balanced
real pixels, `cagnet extend`) and the few-shot baselines: per-pixel MLPs (RepurposeGAN) and
their ensemble's least-disputed labels on unlabelled images, distilled (DatasetGAN).
"""

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cagnet import losses
from cagnet.baselines.shot_network import finetune_network
from cagnet.baselines.zs3net import sample_class_pixels
from cagnet.config import LossConfig
from cagnet.datasets.benchmarks import read_dataset_label
from cagnet.datasets.images import read_image_bgr, read_label
from cagnet.datasets.splits import IGNORE_INDEX, read_class_names
from cagnet.datasets.transforms import EvalTransform
from cagnet.engine import loop
from cagnet.engine.checkpoint import LoadedModel
from cagnet.engine.optim import Optimizers
from cagnet.engine.schedules import iteration_seed
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step
from cagnet.errors import DataError, EmbeddingError
from cagnet.models.discriminator import Discriminator

LOGGER = logging.getLogger("cagnet")
ShotMaps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # feature, latent, grid labels


@dataclass
class ExtensionSettings:
    """The classifier finetuning of `cagnet extend` (None = the checkpoint's
    `train.batch_size` / `train.gen_unseen_rate`) and its shots (`ClassifierFinetune`)."""

    iterations: int = 300
    lr: float = 1e-3
    batch_size: int | None = None
    unseen_rate: float | None = None
    seed: int = 0
    shots: str | None = None
    replay_images: int = 50
    real_weight: float = 1.0
    real_pixels: int = 1024
    adapt_generator: bool = False
    adapt_iterations: int = 100
    train_discriminator: bool = False  # with shots: trunk + head, as in step 2 (else the head)
    # False: no generated features of the classes that have shot pixels (they learn from their
    # real pixels alone; the ablation "does the generator add anything over the shots?")
    generate_shot_classes: bool = True
    # With shots: first this many CaGNet step-1 iterations of the whole network on batches that
    # mix crops of the shot images (a `shot_share` of each) with crops of the model's training
    # images (`shot_network.py`); 0 = the frozen network.
    network_iterations: int = 0
    shot_share: float = 0.125


@dataclass
class PixelSettings:
    """The few-shot baselines: each MLP's training, the ensemble, and how many unlabelled
    images (and random pixels of each) it labels, of which `keep_fraction` are kept."""

    iterations: int = 300
    lr: float = 1e-3
    real_pixels: int = 1024
    ensemble: int = 3
    label_images: int = 100
    pixels_per_image: int = 256
    keep_fraction: float = 0.5

    def finetune(self, seed: int) -> ExtensionSettings:
        """The classifier training of one MLP (or of the distillation) on real pixels."""
        return ExtensionSettings(iterations=self.iterations, lr=self.lr, seed=seed,
                                 real_pixels=self.real_pixels)


@dataclass
class ShotImage:
    """One labelled image as read: BGR uint8 (H, W, 3) and labels (H, W) as indices into the
    extended model's classes (255 = unlabelled)."""

    name: str
    image: np.ndarray
    labels: np.ndarray

    def warped(self, mean_bgr: Sequence[float], warp_size: int) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """(image (3, warp, warp) warped like test images, labels (H, W) at full size)."""
        pixels, labels = EvalTransform(tuple(mean_bgr), warp_size)(self.image, self.labels)
        return torch.from_numpy(pixels), torch.from_numpy(labels)


def read_shots(folder: str | Path, class_names: Sequence[str]) -> list[ShotImage]:
    """The labelled images of a shots folder: `class_names.txt` (line i names mask value i, a
    class of the model or an added one), `images/<id>.<ext>`, `masks/<id>.png` (index PNGs,
    255 = unlabelled); labels as indices into `class_names`."""
    folder = Path(folder)
    names = read_class_names(folder / "class_names.txt")
    unknown = [name for name in names if name not in class_names]
    if unknown:
        raise DataError(f"{folder / 'class_names.txt'}: {unknown} are neither classes of the "
                        f"model nor added ones ({list(class_names)})")
    lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lookup[:len(names)] = [list(class_names).index(name) for name in names]
    masks = sorted((folder / "masks").glob("*.png"))
    if not masks:
        raise DataError(f"shots folder {folder}: no masks/<id>.png")
    shots = []
    for path in masks:
        images = sorted((folder / "images").glob(path.stem + ".*"))
        if not images:
            raise DataError(f"{path}: no image {folder / 'images' / path.stem}.<ext>")
        image, mask = read_image_bgr(images[0]), read_label(path)
        stray = sorted(set(np.unique(mask).tolist()) - set(range(len(names))) - {IGNORE_INDEX})
        if stray:
            raise DataError(f"{path}: values {stray} name no line of class_names.txt")
        if image.shape[:2] != mask.shape:
            raise DataError(f"{path}: mask size {mask.shape} differs from {images[0]}")
        shots.append(ShotImage(path.stem, image, lookup[mask]))
    return shots


@torch.no_grad()
def frozen_maps(model: nn.Module, image: torch.Tensor, labels: torch.Tensor | None,
                device: torch.device) -> ShotMaps:
    """Feature (F, h, w) and latent (E, h, w) of one image (3, H', W') through the frozen
    backbone and contextual module (eval mode, z = its mean), and labels (H, W) nearest-resized
    to their grid (None stays None)."""
    model.backbone.eval()
    model.context.eval()
    output = model.features(image[None].to(device), sample_latent=False)
    if labels is not None:
        labels = losses.resize_labels(labels[None].to(device), output.feature.shape[-2:])[0]
    return output.feature[0].float(), output.latent[0].float(), labels


@dataclass
class PixelPool:
    """Real labelled pixels: rows (N, F) and classes (N,) in model class order."""

    rows: torch.Tensor
    labels: torch.Tensor

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` pixels drawn with replacement, every class present equally likely."""
        weights = 1.0 / torch.bincount(self.labels)[self.labels].double().cpu()
        index = torch.multinomial(weights, count, True, generator=generator).to(self.rows.device)
        return self.rows[index], self.labels[index]


def merge_pools(*pools: PixelPool | None) -> PixelPool | None:
    pools = [pool for pool in pools if pool is not None]
    return PixelPool(torch.cat([pool.rows for pool in pools]),
                     torch.cat([pool.labels for pool in pools])) if pools else None


def pool_of(maps: Iterable[tuple[torch.Tensor, torch.Tensor]], max_per_class: int = 0,
            generator: torch.Generator | None = None) -> PixelPool | None:
    """The labelled pixels of (feature (F, h, w), labels (h, w)) pairs; with `max_per_class`,
    at most that many random ones per class and image."""
    rows, labels = [], []
    for feature, label in maps:
        for index, found in sample_class_pixels(feature[None], label[None],
                                                max_per_class or label.numel(), generator):
            rows.append(found)
            labels.append(torch.full((len(found),), index, device=found.device))
    return PixelPool(torch.cat(rows), torch.cat(labels)) if rows else None


def replay_pool(model: nn.Module, dataset: Dataset, count: int, seed: int,
                device: torch.device) -> PixelPool | None:
    """Pixels of `count` random images of `dataset` (warped like test images; training labels,
    so seen classes only), at most 128 per class and image."""
    generator = torch.Generator().manual_seed(seed)
    samples = (dataset[index] for index in torch.randperm(len(dataset), generator=generator)
               [:count].tolist())
    return pool_of((frozen_maps(model, sample["image"], sample["label"], device)[::2]
                    for sample in samples), 128, generator)


def add_unseen_classes(model: nn.Module, rows: torch.Tensor) -> None:
    """Append rows (n, E) to `model.class_embeddings` as unseen classes and grow the classifier
    head in place: rows 0..K-1 copied, K..K+n-1 the mean of the old real-class rows (weight and
    bias), the extra logit (if any) moved from row K to row K + n."""
    embeddings = model.class_embeddings
    if rows.dim() != 2 or rows.shape[1] != embeddings.shape[1]:
        raise EmbeddingError(f"new class embeddings have shape {tuple(rows.shape)}, the model's "
                             f"are {embeddings.shape[1]}-d")
    model.class_embeddings = torch.cat([embeddings, rows.to(embeddings)], dim=0)
    discriminator, num_new = model.discriminator, rows.shape[0]
    old, num_classes = discriminator.classifier, discriminator.num_classes
    extra = int(discriminator.extra_logit)
    new = nn.Conv2d(old.in_channels, num_classes + num_new + extra, 1, bias=True)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        for target, source in ((new.weight, old.weight), (new.bias, old.bias)):
            target[:num_classes] = source[:num_classes]
            target[num_classes:num_classes + num_new] = source[:num_classes].mean(0)
            if extra:
                target[num_classes + num_new] = source[num_classes]
    discriminator.classifier = new
    discriminator.num_classes = num_classes + num_new


class ClassifierFinetune(loop.Method):
    """Train `trainable` (part or all of `model.discriminator`) on generated batches (`draw`)
    and / or real pixels (`pool`, sampled class-balanced: K shots of a new class weigh as much as
    thousands of replayed ones; weighted `real_weight`), after `settings.adapt_iterations` of
    generator adaptation to `shots` with the `content` loss (kind, sigmas) when
    `settings.adapt_generator`. Other parameters keep their value (`requires_grad` restored)."""

    name = "extend"

    def __init__(self, model: nn.Module, trainable: nn.Module, settings: ExtensionSettings,
                 device: torch.device, draw: LabelDraw | None = None,
                 pool: PixelPool | None = None, shots: Sequence[ShotMaps] = (),
                 content: tuple[str, Sequence[float]] | None = None) -> None:
        self.model, self.draw, self.pool, self.settings = model, draw, pool, settings
        self.content, self.context = content, StepContext(device)
        self.generator = draw.generator if draw is not None else torch.Generator()
        self.adapt = settings.adapt_iterations if settings.adapt_generator and shots else 0
        self.shots = [torch.stack(part) for part in zip(*shots)] if self.adapt else None
        self.flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
        model.requires_grad_(False)
        trainable.requires_grad_(True)
        self.optimizers = {"classifier": torch.optim.Adam(trainable.parameters(), lr=settings.lr)}
        if self.adapt:
            model.generator.requires_grad_(True)
            self.optimizers["generator"] = torch.optim.Adam(model.generator.parameters(), lr=1e-4)
        self.cagnet_optimizers = Optimizers(None, self.optimizers["classifier"], None)
        self.loss = dataclasses.replace(LossConfig(), step2_discriminator_cls_fake=1.0,
                                        step2_generator_cls_fake=0.0)
        self.losses: list[float] = []

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        self.model.train()  # dropout in generator and trunk, as in a step-2 iteration
        self.generator.manual_seed(iteration_seed(self.settings.seed, iteration))
        if iteration < self.adapt:
            features, latents, labels = self.shots
            fake = self.model.generate(labels, latents)
            loss = losses.content_loss(self.content[0], fake.float(), features, labels,
                                       self.content[1], max_pixels_per_class=512,
                                       generator=self.generator)
            return {"content": float(loss.detach()), **self._update("generator", loss)}
        terms = {"skipped": 0.0}
        if self.draw is not None:
            terms = classifier_step(self.model, self.cagnet_optimizers, self.loss, self.draw,
                                    self.context)
        if self.pool is not None and not terms["skipped"]:
            rows, labels = self.pool.sample(self.settings.real_pixels, self.generator)
            loss = F.cross_entropy(self.model.discriminator(rows).class_logits.float(), labels)
            terms.update(cls_real=float(loss.detach()), **self._update(
                "classifier", self.settings.real_weight * loss))
        self.losses.append(terms.get("step2_cls_fake", terms.get("cls_real")))
        return terms

    def _update(self, name: str, loss: torch.Tensor) -> dict[str, float]:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return {"skipped": 1.0}
        loss.backward()
        optimizer.step()
        return {"skipped": 0.0}

    def finish(self, run_dir: Path | None) -> None:
        for parameter, flag in self.flags.items():
            parameter.requires_grad_(flag)
        self.model.eval()


def finetune_classifier(model: nn.Module, trainable: nn.Module, settings: ExtensionSettings,
                        device: torch.device, draw: LabelDraw | None = None,
                        pool: PixelPool | None = None, shots: Sequence[ShotMaps] = (),
                        content: tuple[str, Sequence[float]] | None = None,
                        show_progress: bool = False) -> list[float]:
    """Run `ClassifierFinetune` (no run folder); returns each classifier iteration's loss
    (generated when `draw` is given, else real)."""
    method = ClassifierFinetune(model, trainable, settings, device, draw, pool, shots, content)
    try:
        total = method.adapt + settings.iterations
        loop.run(method, loop.LoopSettings(total, settings.seed, max(1, total), max(1, total)),
                 None, show_progress=show_progress)
    finally:
        method.finish(None)
    return method.losses


def extend_with_shots(loaded: LoadedModel, names: Sequence[str], rows: torch.Tensor,
                      settings: ExtensionSettings, shots: Sequence[ShotImage] = (),
                      replay: Callable[[nn.Module], PixelPool | None] | None = None,
                      training: Dataset | None = None, show_progress: bool = False) -> dict:
    """Add `names` (embedding rows (n, E)) to a loaded CaGNet as unseen classes and finetune
    its classifier head on generated features, the `shots` and the seen pixels of
    `replay(model)`; with `settings.network_iterations`, the whole network first learns from
    crops of the shots mixed with those of `training` (the model's training images, new
    classes unlabelled). The class list grows. Returns a summary."""
    config, model, device = loaded.config, loaded.model, loaded.device
    class_names, pool = loaded.class_names + list(names), None
    summary: dict = {"classes_before": model.num_classes}
    add_unseen_classes(model, rows.to(device))
    if shots and settings.network_iterations:
        if training is None:
            raise DataError("network_iterations needs the model's training images (the "
                            "checkpoint's data.root): none were given")
        summary["network"] = finetune_network(
            model, config, shots, training, settings.network_iterations, settings.shot_share,
            settings.seed, device, show_progress)
    maps = [frozen_maps(model, *shot.warped(config.data.mean_bgr, config.eval.warp_size),
                        device) for shot in shots]
    if shots:
        pool = merge_pools(pool_of([(feature, labels) for feature, _, labels in maps]),
                           replay(model) if replay is not None else None)
        found = torch.bincount(pool.labels, minlength=len(class_names)).tolist() if pool else []
        summary.update(shot_images=[shot.name for shot in shots], real_pixels_per_class={
            name: count for name, count in zip(class_names, found) if count})
    grid = tuple(model.feature_size(config.data.crop_size, config.data.crop_size))
    batch_size = settings.batch_size or config.train.batch_size
    unseen_rate = config.train.gen_unseen_rate if settings.unseen_rate is None \
        else settings.unseen_rate
    excluded = () if settings.generate_shot_classes else tuple(
        summary["classes_before"] + index for index, name in enumerate(names)
        if name in summary.get("real_pixels_per_class", {}))
    if excluded:
        summary["not_generated"] = [class_names[index] for index in excluded]
    draw = LabelDraw(batch_size, grid, unseen_rate, torch.Generator(), excluded)
    trainable = model.discriminator if settings.train_discriminator and shots else \
        model.discriminator.classifier
    history = finetune_classifier(model, trainable, settings, device, draw, pool, maps,
                                  (config.loss.content, config.loss.mmd_sigmas), show_progress)
    loaded.class_names, loaded.added_classes = class_names, loaded.added_classes + list(names)
    tail = history[-max(1, len(history) // 10):] or [float("nan")]
    summary.update(dataclasses.asdict(settings), classes_after=model.num_classes,
                   grid_size=list(grid), batch_size=batch_size, unseen_rate=unseen_rate,
                   loss_first=history[0] if history else None, loss_last=sum(tail) / len(tail))
    LOGGER.info("extended %d -> %d classes; classifier loss %.4g -> %.4g over %d iterations",
                summary["classes_before"], model.num_classes,
                summary["loss_first"] or float("nan"), summary["loss_last"], settings.iterations)
    return summary


def train_pixel_classifier(model: nn.Module, pool: PixelPool, settings: PixelSettings,
                           seed: int, device: torch.device) -> Discriminator:
    """Replace `model.discriminator` by a fresh per-pixel MLP of its shape (no extra logit)
    trained on `pool` alone; returns the MLP."""
    old = model.discriminator
    torch.manual_seed(seed)
    model.discriminator = Discriminator(
        old.trunk.conv.in_channels, old.trunk.conv.out_channels, old.num_classes,
        extra_logit=False, dropout=old.trunk.dropout.p).to(device)
    finetune_classifier(model, model.discriminator, settings.finetune(seed), device, pool=pool)
    return model.discriminator


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def ensemble_labels(classifiers: Sequence[nn.Module], rows: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (N,) = argmax of the members' mean softmax on rows (N, F), and their
    disagreement (N,): the Jensen-Shannon divergence H(mean p) - mean H(p)."""
    probabilities = torch.stack([torch.softmax(member.eval()(rows).class_logits.float(), 1)
                                 for member in classifiers])
    mean = probabilities.mean(0)
    return mean.argmax(1), _entropy(mean) - _entropy(probabilities).mean(0)


@torch.no_grad()
def synthesise_labels(model: nn.Module, classifiers: Sequence[nn.Module], dataset: Dataset,
                      indices: Sequence[int], settings: PixelSettings, seed: int,
                      truth_lookup: np.ndarray, new_classes: Sequence[int],
                      device: torch.device) -> tuple[PixelPool, dict]:
    """Label `pixels_per_image` random pixels of each unlabelled image `indices` of `dataset`
    with the ensemble; keep the `keep_fraction` of least disagreement. Returns them and how
    many were kept and right: read afterwards from the hidden labels (`truth_lookup`: dataset
    id -> model class), which never reach the pool."""
    generator, rows, where = torch.Generator().manual_seed(seed), [], []
    for index in indices:
        feature = frozen_maps(model, dataset[index]["image"], None, device)[0]
        chosen = torch.randperm(feature[0].numel(), generator=generator)[:settings.pixels_per_image]
        rows.append(feature.flatten(1).t()[chosen.to(device)])
        where.append((index, feature.shape[-2:], chosen))
    rows = torch.cat(rows)
    labels, disagreement = ensemble_labels(classifiers, rows)
    keep = disagreement.argsort()[:max(1, int(settings.keep_fraction * len(labels)))]
    truth = torch.cat([losses.resize_labels(torch.from_numpy(truth_lookup[read_dataset_label(
        dataset, index)]).long()[None], size)[0].flatten()[chosen]
        for index, size, chosen in where])
    kept = torch.zeros(len(labels), dtype=torch.bool).index_fill(0, keep.cpu(), True)
    labels, known = labels.cpu(), truth != IGNORE_INDEX
    right, new = labels == truth, torch.isin(labels, torch.tensor(list(new_classes)))

    def rate(mask: torch.Tensor) -> float | None:
        return round(float(right[mask].float().mean()), 4) if mask.any() else None

    return PixelPool(rows[keep], labels.to(device)[keep]), {
        "images": len(indices), "labelled_pixels": len(labels), "kept_pixels": len(keep),
        "kept_new_class_pixels": int((kept & new).sum()), "kept_right": rate(kept & known),
        "all_right": rate(known), "kept_new_class_right": rate(kept & known & new)}
