"""Few-shot learning with the network trained, not frozen (`cagnet extend --shots DIR
--network-iterations N`): before the classifier finetuning, CaGNet's step 1 (backbone,
contextual module, generator and discriminator; the losses, rates and schedules of the
checkpoint's config) runs on batches that mix random crops of the shot images, the new classes
labelled, with crops of the model's training images, where only the old seen classes are. The
features learn to tell the new classes apart, and the generator follows the changed features:
its content loss now covers the shot pixels too."""

import logging
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cagnet.config import Config
from cagnet.datasets.transforms import TrainTransform
from cagnet.engine import loop
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.steps import StepContext, feature_generation_step
from cagnet.errors import ConfigError

LOGGER = logging.getLogger("cagnet")


class LabelledImage(Protocol):
    image: np.ndarray  # BGR uint8 (H, W, 3)
    labels: np.ndarray  # (H, W) model class indices, 255 = unlabelled


def shot_batch_size(batch_size: int, shot_share: float) -> int:
    """How many of a batch's `batch_size` crops come from the shot images (at least one)."""
    return min(batch_size, max(1, round(batch_size * shot_share)))


class NetworkFinetune(loop.Method):
    """Step-1 iterations on mixed batches: `shot_batch_size` crops of random shot images and the
    rest from `training` (a training dataset, indexed by (index, draw) pairs)."""

    name = "extend-network"

    def __init__(self, model: nn.Module, config: Config, shots: Sequence[LabelledImage],
                 training: Dataset, iterations: int, shot_share: float, seed: int,
                 device: torch.device) -> None:
        if not 0.0 < shot_share <= 1.0:
            raise ConfigError(f"shot_share: expected a fraction in (0, 1], got {shot_share}")
        data = config.data
        self.model, self.config, self.shots, self.training = model, config, shots, training
        self.iterations, self.seed, self.device = iterations, seed, device
        self.transform = TrainTransform(tuple(data.mean_bgr), data.warp_size, data.crop_size,
                                        data.scale_min, data.scale_max, data.flip, data.padding)
        self.batch_size = config.train.batch_size
        self.from_shots = shot_batch_size(self.batch_size, shot_share)
        self.cagnet_optimizers = build_optimizers(model, config.optim, train_backbone=True)
        self.optimizers = self.cagnet_optimizers.named()
        self.context = StepContext(device)
        self.losses: list[float] = []

    def set_learning_rates(self, iteration: int) -> dict[str, float]:
        return set_learning_rates(self.cagnet_optimizers, iteration, self.iterations,
                                  self.config.optim)

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (b, 3, crop, crop) and labels (b, crop, crop) of `iteration` (seeded by it)."""
        rng = np.random.default_rng([self.seed, iteration])
        images, labels = [], []
        for index in rng.integers(len(self.shots), size=self.from_shots).tolist():
            image, label = self.transform(self.shots[index].image, self.shots[index].labels, rng)
            images.append(torch.from_numpy(image))
            labels.append(torch.from_numpy(label))
        remaining = self.batch_size - self.from_shots
        for slot, index in enumerate(rng.integers(len(self.training), size=remaining).tolist()):
            sample = self.training[(index, iteration * self.batch_size + slot)]
            images.append(sample["image"])
            labels.append(sample["label"])
        return torch.stack(images).to(self.device), torch.stack(labels).to(self.device)

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        self.model.train()
        images, labels = self.batch(iteration)
        terms = feature_generation_step(self.model, images, labels, self.cagnet_optimizers,
                                        self.config.loss, self.context, train_backbone=True)
        self.losses.append(terms.get("cls_real", float("nan")))
        return terms

    def finish(self, run_dir) -> None:
        self.model.eval()


def finetune_network(model: nn.Module, config: Config, shots: Sequence[LabelledImage],
                     training: Dataset, iterations: int, shot_share: float, seed: int,
                     device: torch.device, show_progress: bool = False) -> dict:
    """Run `NetworkFinetune` (no run folder); returns the real pixels' classification loss of
    the first and last tenth of its iterations."""
    method = NetworkFinetune(model, config, shots, training, iterations, shot_share, seed, device)
    try:
        loop.run(method, loop.LoopSettings(iterations, seed, max(1, iterations),
                                           max(1, iterations)), None,
                 show_progress=show_progress)
    finally:
        method.finish(None)
    tenth = max(1, len(method.losses) // 10)
    first, last = method.losses[:tenth], method.losses[-tenth:]
    summary = {"iterations": iterations, "shot_crops_per_batch": method.from_shots,
               "cls_real_first": float(np.mean(first)) if first else None,
               "cls_real_last": float(np.mean(last)) if last else None}
    LOGGER.info("network trained %d iterations on shots + training images; real-pixel "
                "classification loss %.4g -> %.4g", iterations,
                summary["cls_real_first"] or float("nan"), summary["cls_real_last"] or float("nan"))
    return summary
