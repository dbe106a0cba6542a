"""Paired image / label transforms (method.md §4): BGR uint8 (H, W, 3) images -> float32
(3, h, w) minus the per-channel mean (no std: Caffe convention); labels only resized with nearest
neighbour and padded with 255. All randomness comes from the `numpy.random.Generator` passed in.
"""

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from cagnet.datasets.splits import IGNORE_INDEX


def subtract_mean(image_bgr: np.ndarray, mean_bgr: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 minus the per-channel mean."""
    return image_bgr.astype(np.float32) - np.asarray(mean_bgr, dtype=np.float32)


def resize_pair(image: np.ndarray, label: np.ndarray | None, height: int, width: int
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Bilinear image, nearest-neighbour label."""
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, label


def to_chw(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> contiguous (3, H, W) float32."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class TrainTransform:
    """Mean subtraction -> warp to `warp_size` (aspect not kept) -> random scale -> pad (image
    0, label 255; `centred`: to max(warp_size, crop_size) on all sides, as the original release,
    `bottom_right`: to the crop size) -> random crop -> horizontal flip with probability 0.5."""

    mean_bgr: tuple[float, float, float]
    warp_size: int
    crop_size: int
    scale_min: float = 0.5
    scale_max: float = 1.5
    flip: bool = True
    padding: str = "centred"

    def __call__(self, image_bgr: np.ndarray, label: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        image = subtract_mean(image_bgr, self.mean_bgr)
        image, label = resize_pair(image, label, self.warp_size, self.warp_size)
        scale = rng.uniform(self.scale_min, self.scale_max)
        size = max(1, int(round(self.warp_size * scale)))
        image, label = resize_pair(image, label, size, size)
        centred = self.padding == "centred"
        pad = max((max(self.warp_size, self.crop_size) if centred else self.crop_size) - size, 0)
        if pad:
            before = pad // 2 if centred else 0
            sides = (before, pad - before, before, pad - before)
            image = cv2.copyMakeBorder(image, *sides, cv2.BORDER_CONSTANT, value=0.0)
            label = cv2.copyMakeBorder(label, *sides, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        top = int(rng.integers(0, image.shape[0] - self.crop_size + 1))
        left = int(rng.integers(0, image.shape[1] - self.crop_size + 1))
        image = image[top:top + self.crop_size, left:left + self.crop_size]
        label = label[top:top + self.crop_size, left:left + self.crop_size]
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return to_chw(image), np.ascontiguousarray(label, dtype=np.int64)


@dataclass(frozen=True)
class EvalTransform:
    """Mean subtraction and a warp of the image to `warp_size` x `warp_size`; the label keeps
    its original resolution."""

    mean_bgr: tuple[float, float, float]
    warp_size: int

    def __call__(self, image_bgr: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = subtract_mean(image_bgr, self.mean_bgr)
        image, _ = resize_pair(image, None, self.warp_size, self.warp_size)
        return to_chw(image), np.ascontiguousarray(label, dtype=np.int64)
