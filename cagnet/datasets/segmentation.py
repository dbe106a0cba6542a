"""The segmentation dataset over VOC-style folders, and the iteration-based training sampler.

Randomness is a pure function of (seed, draw number): the sampler numbers every sample it draws
(`draw = iteration * global_batch + position`), the permutation of each epoch comes from
(seed, epoch), and each sample's augmentation from (seed, draw). Resuming at iteration t needs
nothing but t, and results do not depend on the number of loader workers or processes.
"""

import itertools
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.label_sources import LabelSource, PngLabels
from cagnet.errors import DataError


def check_mask(label: np.ndarray, image_shape: tuple[int, ...], known_ids: np.ndarray,
               label_path: Path, image_path: Path) -> None:
    """Raise DataError naming the file when a mask's size differs from its image's or it holds
    a value that is neither a class id nor 255."""
    if tuple(image_shape[:2]) != label.shape:
        raise DataError(f"{label_path}: mask size {label.shape[1]}x{label.shape[0]} differs from "
                        f"image size {image_shape[1]}x{image_shape[0]} ({image_path})")
    values = np.unique(label)
    unknown = values[~np.isin(values, known_ids)]
    if unknown.size:
        raise DataError(f"{label_path}: label values {unknown.tolist()} are neither a class id "
                        f"(0..{int(known_ids[-2])}) nor 255")


class SegmentationDataset(Dataset):
    """Images `<root>/<image_dir>/<id><image_suffix>` and their masks (index PNGs in `label_dir`,
    or `label_reader`'s) through the protocol's lookup. Items: an int (test) or an `(index, draw)`
    pair (training). Samples: `image` float32 (3, h, w), `label` int64 (h, w), `id`, and
    `skipped`, the ids replaced because unreadable (`on_bad_sample="skip"`, training only).
    `label_map` (`data.label_map`) renames mask values on load, before the lookup: every reader
    of a dataset mask (`read_raw`, `read_label`) sees the renamed ids."""

    def __init__(self, root: str | Path, ids: Sequence[str], image_dir: str, label_dir: str,
                 image_suffix: str, label_suffix: str, lookup: np.ndarray,
                 known_ids: set[int], transform: Callable, seed: int = 0,
                 on_bad_sample: str = "error", label_reader: LabelSource | None = None,
                 label_map: dict[int, int] | None = None) -> None:
        if not ids:
            raise DataError(f"no images to load under {root}: the image list is empty")
        self.root = Path(root)
        self.ids = list(ids)
        self.image_dir, self.label_dir = image_dir, label_dir
        self.image_suffix, self.label_suffix = image_suffix, label_suffix
        self.lookup, self.transform, self.seed = lookup, transform, seed
        self.known_ids = np.array(sorted(known_ids))
        self.on_bad_sample = on_bad_sample
        self.label_reader = label_reader or PngLabels(self.root / label_dir, label_suffix)
        self.rename = np.arange(256, dtype=np.uint8)  # data.label_map as a lookup
        for value, new in (label_map or {}).items():
            self.rename[value] = new

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / self.image_dir / f"{self.ids[index]}{self.image_suffix}"

    def label_path(self, index: int) -> Path:
        return self.label_reader.path(self.ids[index])

    def missing_files(self) -> list[Path]:
        """Every listed image or mask that does not exist (a stat per file, no decoding)."""
        return [path for index in range(len(self.ids))
                for path in (self.image_path(index), self.label_path(index))
                if not path.is_file()]

    def read_label(self, index: int) -> np.ndarray:
        """The dataset-id mask (uint8 (H, W)) of item `index`, renamed, without its image (and
        without the size check)."""
        return self.rename[self.label_reader.read(self.ids[index])]

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One image (BGR uint8 (H, W, 3)) and its dataset-id mask (uint8 (H, W), renamed by
        `label_map`), checked."""
        image = read_image_bgr(self.image_path(index))
        label = self.label_reader.read(self.ids[index])
        check_mask(label, image.shape, self.known_ids, self.label_path(index),
                   self.image_path(index))
        return image, self.rename[label]

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
        # A training item's augmentation is a function of (seed, draw); a test item has none.
        rng = () if draw is None else (np.random.default_rng([self.seed, draw]),)
        image_out, label_out = self.transform(image, mapped, *rng)
        return {"image": torch.from_numpy(image_out), "label": torch.from_numpy(label_out),
                "id": self.ids[current], "skipped": skipped}


def collate_samples(samples: list[dict]) -> dict:
    """Stack images; stack labels when they share a size, else keep them as a list."""
    labels = [sample["label"] for sample in samples]
    same_size = all(label.shape == labels[0].shape for label in labels)
    return {"image": torch.stack([sample["image"] for sample in samples]),
            "label": torch.stack(labels) if same_size else labels,
            "id": [sample["id"] for sample in samples],
            "skipped": [name for sample in samples for name in sample["skipped"]]}


class IterationBatchSampler(Sampler):
    """Endless batches of `(index, draw)` pairs. Rank r takes its `batch_size` consecutive draws
    of each global batch, so N processes with batch B see the samples of one with batch N * B."""

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_iteration: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_iteration, self.rank, self.world_size = start_iteration, rank, world_size
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {epoch: np.random.default_rng([self.seed, 7919, epoch])
                                  .permutation(self.dataset_size)}
        return self._permutations[epoch]

    def batch_for(self, iteration: int) -> list[tuple[int, int]]:
        """The `(index, draw)` pairs this rank loads at `iteration`."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return [(int(self._permutation(draw // self.dataset_size)[draw % self.dataset_size]), draw)
                for draw in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return map(self.batch_for, itertools.count(self.start_iteration))

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62
