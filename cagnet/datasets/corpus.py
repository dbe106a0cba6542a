"""The image-level pretraining corpus (`pretrain.corpus`: `images/<id>.jpg` and `labels.txt`
lines `<id> <label>`) and its augmentation. It stands in for ImageNet, which has seen the unseen
categories at image level (never at pixel level), for the shapes benchmark.
"""

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cagnet.datasets.images import read_image_bgr
from cagnet.errors import DataError


def read_corpus(corpus: str | Path, image_size: int, mean_bgr: Sequence[float]
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Every corpus image, resized and mean-subtracted: images (N, 3, S, S) float32, targets
    (N,) int64 in 0..C-1, and the dataset label of each target index."""
    corpus = Path(corpus)
    labels_file = corpus / "labels.txt"
    if not labels_file.is_file():
        raise DataError(f"pretraining corpus {corpus}: missing labels.txt (lines '<id> <label>')")
    try:
        lines = labels_file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{labels_file} is unreadable: {error}") from None
    entries = []
    for line_number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isascii() \
                or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{labels_file}, line {line_number}: expected '<id> <label>', "
                            f"got {line!r}")
        if ".." in Path(parts[0]).parts or Path(parts[0]).is_absolute() or "\\" in parts[0] \
                or any(ord(character) < 32 for character in parts[0]):
            raise DataError(f"{labels_file}, line {line_number}: id {parts[0]!r} escapes the "
                            "corpus folder or contains a control character")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{labels_file} lists no images")
    label_values = sorted({label for _, label in entries})
    index_of = {label: index for index, label in enumerate(label_values)}
    mean = np.asarray(mean_bgr, dtype=np.float32)
    images = np.empty((len(entries), image_size, image_size, 3), dtype=np.float32)
    for row, (name, _) in enumerate(entries):
        image = read_image_bgr(corpus / "images" / f"{name}.jpg")
        images[row] = cv2.resize(image, (image_size, image_size),
                                 interpolation=cv2.INTER_LINEAR).astype(np.float32) - mean
    targets = torch.tensor([index_of[label] for _, label in entries], dtype=torch.long)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), targets, label_values


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 6) -> torch.Tensor:
    """Random translation (zero padding, i.e. mean colour) and horizontal flip per image."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    out = torch.empty_like(images)
    for index in range(batch):
        top, left = int(offsets[index, 0]), int(offsets[index, 1])
        crop = padded[index, :, top:top + height, left:left + width]
        out[index] = crop.flip(-1) if flips[index] else crop
    return out
