"""The official benchmark layouts (`data.layout`): id lists, label sources and the dataset.

- `folders` (default): index PNGs `<root>/<label_dir>/<id><label_suffix>` (VOC
  `SegmentationClass[Aug]`, Pascal-Context `33_context_labels`, any VOC-style folder).
- `voc_sbd`: VOC's PNG in `label_dir` when it exists, else SBD's `<sbd_root>/cls/<id>.mat`.
- `context_mat`: Pascal-Context's 459-label `<label_dir>/<id>.mat`, mapped to the class-name
  file by name through `data.label_names` (`labels.txt`).
- `cocostuff`: index PNGs; ids carry their split folder (`train2017/<id>`), and a missing list
  file is derived from the annotation folder, so the archives work as unpacked.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from cagnet.config import DataConfig
from cagnet.datasets.label_sources import (ContextMatLabels, LabelSource, PngLabels,
                                           VocSbdLabels, context_label_lookup,
                                           read_context_label_names)
from cagnet.datasets.segmentation import SegmentationDataset, check_mask
from cagnet.datasets.splits import read_id_list
from cagnet.errors import DataError

__all__ = ["check_mask", "derive_split_ids", "drop_images_with_unseen", "find_sbd_dataset",
           "label_source", "make_dataset", "missing_list_hint", "read_dataset_label",
           "read_image_ids"]
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
    candidates = (folder / "labels.txt", folder.parent / "labels.txt")
    return next((path for path in candidates if path.is_file()), candidates[1])


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
    """Sorted ids `<split_name>/<stem>` of the masks in `<root>/<label_dir>/<split_name>/` whose
    image exists in `<root>/<image_dir>/<split_name>/` (the COCO-Stuff 164k layout)."""
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


def drop_images_with_unseen(ids: Sequence[str], source: LabelSource, unseen_ids: Iterable[int],
                            skip_unreadable: bool = False, workers: int = 4) -> list[str]:
    """ZS3Net's rule: keep the ids whose mask holds no unseen-class pixel (every mask is read
    once: VOC train_aug, seconds). Unreadable masks raise DataError, or are dropped too with
    `skip_unreadable`."""
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


def make_dataset(data: DataConfig, root: Path, ids: Sequence[str], source: LabelSource,
                 lookup: np.ndarray, known_ids: set[int], transform: Callable,
                 seed: int) -> SegmentationDataset:
    """The dataset of `data.layout`, its masks read by `source`."""
    return SegmentationDataset(root, ids, data.image_dir, data.label_dir, data.image_suffix,
                               data.label_suffix, lookup, known_ids, transform, seed=seed,
                               on_bad_sample=data.on_bad_sample, label_reader=source,
                               label_map=data.label_map)


def read_dataset_label(dataset: SegmentationDataset, index: int) -> np.ndarray:
    """The dataset-id mask (uint8 (H, W)) of item `index` after `data.label_map`, without
    reading its image."""
    return dataset.read_label(index)
