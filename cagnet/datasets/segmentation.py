"""The segmentation dataset over VOC-style folders, and the iteration-based training sampler.

One dataset class serves every benchmark: images `<root>/<image_dir>/<id><image_suffix>` and
index masks `<root>/<label_dir>/<id><label_suffix>`, with the protocol's label lookup applied.

Randomness is a pure function of (seed, draw number): the sampler numbers every sample it draws
(`draw = iteration * global_batch + position`), the permutation of each epoch comes from
(seed, epoch), and each sample's augmentation from (seed, draw). Resuming at iteration t needs
nothing but t, and results do not depend on the number of loader workers or processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cagnet.datasets.images import read_image_bgr, read_label
from cagnet.errors import DataError


class SegmentationDataset(Dataset):
    """Images and protocol-mapped labels.

    Items are either an int (test: no randomness) or an `(index, draw)` pair from
    `IterationBatchSampler` (training). A sample is a dict: `image` float32 (3, h, w),
    `label` int64 (h, w), `id` str, `skipped` list of ids replaced because they were unreadable
    (only with `on_bad_sample="skip"`, and only for training items: a test item is never
    replaced, since that would silently change the metric).
    """

    def __init__(self, root: str | Path, ids: Sequence[str], image_dir: str, label_dir: str,
                 image_suffix: str, label_suffix: str, lookup: np.ndarray,
                 known_ids: set[int], transform: Callable, seed: int = 0,
                 on_bad_sample: str = "error") -> None:
        if not ids:
            raise DataError(f"no images to load under {root}: the image list is empty")
        self.root = Path(root)
        self.ids = list(ids)
        self.image_dir, self.label_dir = image_dir, label_dir
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        self.lookup = lookup
        self.known_ids = np.array(sorted(known_ids))
        self.transform = transform
        self.seed = seed
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / self.image_dir / f"{self.ids[index]}{self.image_suffix}"

    def label_path(self, index: int) -> Path:
        return self.root / self.label_dir / f"{self.ids[index]}{self.label_suffix}"

    def missing_files(self) -> list[Path]:
        """Every listed image or mask that does not exist (a stat per file, no decoding)."""
        return [path for index in range(len(self.ids))
                for path in (self.image_path(index), self.label_path(index))
                if not path.is_file()]

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one image (BGR uint8) and its raw dataset-id mask, checking that they agree."""
        image = read_image_bgr(self.image_path(index))
        label = read_label(self.label_path(index))
        if image.shape[:2] != label.shape:
            raise DataError(f"{self.label_path(index)}: mask size {label.shape[1]}x"
                            f"{label.shape[0]} differs from image size {image.shape[1]}x"
                            f"{image.shape[0]} ({self.image_path(index)})")
        values = np.unique(label)
        unknown = values[~np.isin(values, self.known_ids)]
        if unknown.size:
            raise DataError(f"{self.label_path(index)}: label values {unknown.tolist()} are "
                            f"neither a class id (0..{int(self.known_ids[-2])}) nor 255")
        return image, label

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        index, draw = (item, None) if isinstance(item, int) else item
        skipped: list[str] = []
        for attempt in range(len(self.ids)):
            current = (index + attempt) % len(self.ids)
            try:
                image, label = self.read_raw(current)
                break
            except DataError as error:
                if self.on_bad_sample != "skip":
                    raise
                if draw is None:  # a test sample: replacing it would change the metric
                    raise DataError(f"{error} (evaluation never skips samples: "
                                    "data.on_bad_sample applies to training only)") from None
                skipped.append(self.ids[current])
        else:
            raise DataError(f"every image under {self.root} is unreadable")
        mapped = self.lookup[label]
        if draw is None:
            image_out, label_out = self.transform(image, mapped)
        else:
            rng = np.random.default_rng([self.seed, draw])
            image_out, label_out = self.transform(image, mapped, rng)
        return {"image": torch.from_numpy(image_out), "label": torch.from_numpy(label_out),
                "id": self.ids[current], "skipped": skipped}


def collate_samples(samples: list[dict]) -> dict:
    """Stack images; stack labels when they share a size, else keep them as a list."""
    labels = [sample["label"] for sample in samples]
    same_size = all(label.shape == labels[0].shape for label in labels)
    return {
        "image": torch.stack([sample["image"] for sample in samples]),
        "label": torch.stack(labels) if same_size else labels,
        "id": [sample["id"] for sample in samples],
        "skipped": [name for sample in samples for name in sample["skipped"]],
    }


class IterationBatchSampler(Sampler):
    """Endless batches of `(index, draw)` pairs for an iteration-based loop.

    Epoch e is a permutation of the dataset drawn from (seed, e). Global batch t covers draws
    `t * batch_size * world_size ...`; rank r takes its `batch_size` consecutive draws of it, so
    N processes with batch B see exactly the samples of one process with batch N * B.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_iteration: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.rank = rank
        self.world_size = world_size
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, 7919, epoch])
                                  .permutation(self.dataset_size)}
        return self._permutations[epoch]

    def batch_for(self, iteration: int) -> list[tuple[int, int]]:
        """The `(index, draw)` pairs this rank loads at `iteration`."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        batch = []
        for draw in range(first, first + self.batch_size):
            epoch, position = divmod(draw, self.dataset_size)
            batch.append((int(self._permutation(epoch)[position]), draw))
        return batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while True:
            yield self.batch_for(iteration)
            iteration += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62
