"""The official benchmark layouts (`data.layout`): id lists, label sources and the dataset.

- `folders` (default): `<root>/<image_dir>/<id><image_suffix>` and index PNGs
  `<root>/<label_dir>/<id><label_suffix>`: VOC `SegmentationClass[Aug]`, Pascal-Context
  `33_context_labels` / `59_context_labels`, any custom VOC-style folder.
- `voc_sbd`: VOC's PNG in `label_dir` when it exists, else SBD's `<sbd_root>/cls/<id>.mat`
  (no conversion step needed; `cagnet data prepare-voc` still derives the train_aug list).
- `context_mat`: the 459-label `<label_dir>/<id>.mat` of Pascal-Context, mapped to the
  recipe's class-name file by name through `data.label_names` (`labels.txt`).
- `cocostuff`: index PNGs as `folders`; ids carry their split folder (`train2017/<id>`), and a
  missing list file is derived from `<root>/<label_dir>/<list stem>/*.png` (every annotation
  whose image exists), so `images/train2017` + `annotations/train2017` work as unpacked.

ZS3Net's protocol removes training images that contain unseen pixels
(`data.drop_images_with_unseen`); `drop_images_with_unseen` reads every training mask once when
the dataset is built (VOC train_aug: ~10 k small PNGs, seconds).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cagnet.config import DataConfig
from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.label_sources import (ContextMatLabels, LabelSource, PngLabels,
                                           VocSbdLabels, context_label_lookup,
                                           read_context_label_names)
from cagnet.datasets.segmentation import SegmentationDataset
from cagnet.datasets.splits import read_id_list
from cagnet.errors import DataError

LOGGER = logging.getLogger("cagnet")


def find_sbd_dataset(path: str | Path) -> Path:
    """The SBD folder that holds `cls/`: accepts `benchmark_RELEASE/dataset`,
    `benchmark_RELEASE` or the folder that contains `benchmark_RELEASE`."""
    path = Path(path)
    for candidate in (path, path / "dataset", path / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise DataError(f"SBD folder not found at {path}: expected benchmark_RELEASE/dataset/cls/ "
                    "(from benchmark.tgz) below it")


def _label_names_path(data: DataConfig, root: Path) -> Path:
    if data.label_names:
        given = Path(data.label_names).expanduser()
        return given if given.is_absolute() or not (root / given).exists() else root / given
    folder = root / data.label_dir
    for candidate in (folder / "labels.txt", folder.parent / "labels.txt"):
        if candidate.is_file():
            return candidate
    return folder.parent / "labels.txt"


def label_source(data: DataConfig, root: Path, class_names: Sequence[str]) -> LabelSource:
    """The label reader of `data.layout` (see the module docstring)."""
    folder = root / data.label_dir
    if data.layout == "voc_sbd":
        return VocSbdLabels(folder, find_sbd_dataset(data.sbd_root) / "cls", data.label_suffix)
    if data.layout == "context_mat":
        names_path = _label_names_path(data, root)
        lookup, _ = context_label_lookup(read_context_label_names(names_path), class_names,
                                         str(names_path))
        return ContextMatLabels(folder, lookup, data.label_suffix)
    return PngLabels(folder, data.label_suffix)


def derive_split_ids(root: Path, image_dir: str, label_dir: str, split_name: str,
                     image_suffix: str = ".jpg", label_suffix: str = ".png") -> list[str]:
    """Ids `<split_name>/<stem>` of every `<root>/<label_dir>/<split_name>/<stem><label_suffix>`
    whose image `<root>/<image_dir>/<split_name>/<stem><image_suffix>` exists, sorted (the
    COCO-Stuff 164k layout)."""
    label_folder = root / label_dir / split_name
    if not label_folder.is_dir():
        raise DataError(f"annotation folder not found: {label_folder} (COCO-Stuff: unpack "
                        "stuffthingmaps_trainval2017.zip into <root>/annotations)")
    image_folder = root / image_dir / split_name
    stems = sorted(p.name[:-len(label_suffix)] for p in label_folder.iterdir()
                   if p.name.endswith(label_suffix))
    ids = [f"{split_name}/{stem}" for stem in stems
           if (image_folder / f"{stem}{image_suffix}").is_file()]
    if not ids:
        raise DataError(f"no annotation in {label_folder} has its image in {image_folder}")
    return ids


def missing_list_hint(path: Path) -> str:
    """What to do about a missing id list, by the list's name."""
    name = str(path).lower()
    if "train_aug" in name:
        return ("derive it from VOC 2012 + SBD with `cagnet data prepare-voc --voc VOC2012 "
                "--sbd benchmark_RELEASE`")
    if "context" in name:
        return ("the Pascal-Context train (4,998) / val (5,105) id lists ship as "
                "data/context/train.txt and val.txt; `cagnet data convert-lists` converts the "
                "original release's .npy lists (data/context/README.md)")
    return "expected a text file with one image id per line"


def read_image_ids(list_path: Path, data: DataConfig, root: Path) -> list[str]:
    """The ids of an id list; with `layout: cocostuff` a missing list is derived from the
    folders (split folder = the list file's stem, e.g. `train2017.txt` -> `train2017/`)."""
    if list_path.is_file():
        return read_id_list(list_path)
    if data.layout == "cocostuff":
        ids = derive_split_ids(root, data.image_dir, data.label_dir, list_path.stem,
                               data.image_suffix, data.label_suffix)
        LOGGER.info("%s not found: %d ids derived from %s", list_path, len(ids),
                    root / data.label_dir / list_path.stem)
        return ids
    raise DataError(f"image list not found: {list_path}: {missing_list_hint(list_path)}")


def drop_images_with_unseen(ids: Sequence[str], source: LabelSource,
                            unseen_ids: Iterable[int], skip_unreadable: bool = False,
                            workers: int = 4) -> list[str]:
    """ZS3Net's rule: keep the ids whose mask holds no unseen-class pixel (masks read once).

    Unreadable masks raise DataError, or are dropped too with `skip_unreadable`."""
    unseen = np.zeros(256, dtype=bool)
    unseen[list(unseen_ids)] = True

    def keep(image_id: str) -> bool:
        try:
            return not bool(unseen[source.read(image_id)].any())
        except DataError:
            if skip_unreadable:
                return False
            raise

    with ThreadPoolExecutor(max(1, workers)) as pool:
        flags = list(pool.map(keep, ids))
    kept = [image_id for image_id, flag in zip(ids, flags) if flag]
    if not kept:
        raise DataError("data.drop_images_with_unseen: every training image contains "
                        "unseen-class pixels; nothing is left to train on")
    LOGGER.info("data.drop_images_with_unseen: %d of %d training images contain unseen-class "
                "pixels and are dropped", len(ids) - len(kept), len(ids))
    return kept


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


class BenchmarkDataset(SegmentationDataset):
    """`SegmentationDataset` whose masks come from a `LabelSource` (SBD / Context `.mat`)."""

    def __init__(self, label_reader: LabelSource, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.label_reader = label_reader

    def label_path(self, index: int) -> Path:
        return self.label_reader.path(self.ids[index])

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One image (BGR uint8 (H, W, 3)) and its dataset-id mask (uint8 (H, W))."""
        image = read_image_bgr(self.image_path(index))
        label = self.label_reader.read(self.ids[index])
        check_mask(label, image.shape, self.known_ids, self.label_path(index),
                   self.image_path(index))
        return image, label


def make_dataset(data: DataConfig, root: Path, ids: Sequence[str], source: LabelSource,
                 lookup: np.ndarray, known_ids: set[int], transform: Callable,
                 seed: int) -> SegmentationDataset:
    """The dataset of `data.layout`: plain `SegmentationDataset` for PNG layouts."""
    arguments = (root, ids, data.image_dir, data.label_dir, data.image_suffix,
                 data.label_suffix, lookup, known_ids, transform)
    if isinstance(source, PngLabels):
        return SegmentationDataset(*arguments, seed=seed, on_bad_sample=data.on_bad_sample)
    return BenchmarkDataset(source, *arguments, seed=seed, on_bad_sample=data.on_bad_sample)


def read_dataset_label(dataset: SegmentationDataset, index: int) -> np.ndarray:
    """The raw dataset-id mask (uint8 (H, W)) of item `index`, without reading its image."""
    reader = getattr(dataset, "label_reader", None)
    if reader is not None:
        return reader.read(dataset.ids[index])
    return PngLabels(dataset.root / dataset.label_dir, dataset.label_suffix).read(
        dataset.ids[index])
