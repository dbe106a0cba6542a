"""Image-level classification pretraining of the backbone trunk (`cagnet pretrain`).

The real benchmarks start from ImageNet weights, which have seen the unseen categories at image
level (never at pixel level). The shapes benchmark reproduces that condition with its own
pretraining corpus: single-object images of every class with image-level labels. The trunk
(stem + res2..res5) is trained with a global-average-pool linear classifier, and the trunk
weights are written as an init file that recipes load through `model.init`, exactly like an
ImageNet init.

Corpus layout: `<corpus>/images/<id>.jpg` and `<corpus>/labels.txt` with lines `<id> <label>`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cagnet.datasets.images import read_image_bgr
from cagnet.errors import DataError
from cagnet.utils.io import atomic_torch_save

LOGGER = logging.getLogger("cagnet")
FORMAT = "cagnet-backbone-init-v1"


def read_corpus(corpus: str | Path, image_size: int, mean_bgr: Sequence[float]
                ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Load every corpus image, resized to `image_size` and mean-subtracted.

    Returns images (N, 3, S, S) float32, targets (N,) int64 in 0..C-1, and the dataset label
    of each target index.
    """
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
    import cv2

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


def swap_batchnorm(module: nn.Module, to_trainable: bool) -> nn.Module:
    """Replace every `FrozenBatchNorm2d` by a trainable `nn.BatchNorm2d` (or back), carrying
    the affine parameters and running statistics over.

    Image-level pretraining trains BatchNorm as ImageNet pretraining does; segmentation training
    then freezes the learned statistics, exactly as DeepLab-v2 does with its ImageNet init.
    """
    from cagnet.models import FrozenBatchNorm2d

    source_type = FrozenBatchNorm2d if to_trainable else nn.BatchNorm2d
    for name, child in module.named_children():
        if isinstance(child, source_type):
            replacement = (nn.BatchNorm2d(child.num_features, eps=child.eps) if to_trainable
                           else FrozenBatchNorm2d(child.num_features, eps=child.eps))
            with torch.no_grad():
                replacement.weight.copy_(child.weight)
                replacement.bias.copy_(child.bias)
                replacement.running_mean.copy_(child.running_mean)
                replacement.running_var.copy_(child.running_var)
            replacement.weight.requires_grad_(to_trainable)
            replacement.bias.requires_grad_(to_trainable)
            setattr(module, name, replacement.to(child.weight.device))
        else:
            swap_batchnorm(child, to_trainable)
    return module


class TrunkClassifier(nn.Module):
    """Backbone -> global average pool -> linear classifier.

    With `include_aspp` the pooled features are the ASPP output (the embedding-space map the
    segmentation model uses), so the ASPP is pretrained too, as in DeepLab-v2's init file;
    otherwise they are the trunk's res5 output.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, include_aspp: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.include_aspp = include_aspp
        channels = backbone.embed_dim if include_aspp else backbone.trunk_channels
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images) if self.include_aspp \
            else self.backbone.trunk_forward(images)
        return self.head(features.mean(dim=(2, 3)))


def pretrain_backbone(backbone: nn.Module, corpus: str | Path, out_path: str | Path, *,
                      image_size: int, iterations: int, batch_size: int, lr: float,
                      momentum: float, weight_decay: float, mean_bgr: Sequence[float],
                      seed: int, device: torch.device, include_aspp: bool = True,
                      aspp_lr_mult: float = 0.1, show_progress: bool = True) -> dict:
    """Train `backbone` (its trunk, and its ASPP when `include_aspp`) as an image classifier
    on `corpus` and save its weights.

    A tenth of the corpus is held out to report accuracy. Returns a summary dict.
    """
    from tqdm import tqdm

    images, targets, label_values = read_corpus(corpus, image_size, mean_bgr)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    held_out = max(1, len(order) // 10)
    test_index, train_index = order[:held_out], order[held_out:]
    swap_batchnorm(backbone, to_trainable=True)
    model = TrunkClassifier(backbone, len(label_values), include_aspp).to(device)
    trunk = [p for name, p in model.named_parameters()
             if p.requires_grad and not name.startswith("backbone.aspp")]
    aspp = [p for p in backbone.aspp.parameters() if p.requires_grad] if include_aspp else []
    # The ASPP sums four un-normalised branches: at the trunk's rate it diverges.
    groups = [{"params": trunk, "lr_mult": 1.0}, {"params": aspp, "lr_mult": aspp_lr_mult}]
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=True)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    running = []
    for iteration in tqdm(range(iterations), disable=not show_progress, desc="pretrain"):
        warmup = min(1.0, (iteration + 1) / max(1, iterations // 20))
        for group in optimizer.param_groups:
            group["lr"] = group["lr_mult"] * lr * warmup * 0.5 * (
                1 + math.cos(math.pi * iteration / iterations))
        batch = train_index[torch.randint(len(train_index), (batch_size,), generator=generator)]
        inputs = augment(images[batch], generator).to(device)
        loss = F.cross_entropy(model(inputs), targets[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(float(loss.detach()))
    accuracy = evaluate_accuracy(model, images[test_index], targets[test_index], device)
    swap_batchnorm(backbone, to_trainable=False)
    state = {key: value.detach().cpu() for key, value in backbone.state_dict().items()
             if include_aspp or not key.startswith("aspp.")}
    summary = {"held_out_accuracy": accuracy, "final_loss": float(np.mean(running[-20:])),
               "num_images": len(targets), "num_classes": len(label_values)}
    atomic_torch_save(out_path, {"format": FORMAT, "backbone": state, "summary": summary,
                                 "label_values": label_values})
    LOGGER.info("pretrained trunk: held-out accuracy %.3f, saved %s", accuracy, out_path)
    return summary


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                      device: torch.device, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(targets), batch_size):
        logits = model(images[start:start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == targets[start:start + batch_size]).sum())
    model.train()
    return correct / max(1, len(targets))
