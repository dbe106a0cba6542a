"""From config to data: the benchmark's classes and embedding rows, and its datasets (the only
place where `data` / `embeddings` config values are read; everything below gets plain values).
"""

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from cagnet.class_embeddings import load_class_embeddings
from cagnet.config import Config, DataConfig
from cagnet.datasets import benchmarks
from cagnet.datasets.segmentation import SegmentationDataset, collate_samples
from cagnet.datasets.splits import ClassSplit, read_class_names, read_split
from cagnet.datasets.transforms import EvalTransform, TrainTransform
from cagnet.errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSTALLED_ROOT = Path(sys.prefix) / "share" / "cagnet"  # data/ and experiments/ of a pip install


def resolve_path(path: str, root: str | Path | None = None, key: str = "") -> Path:
    """A config path: absolute as given, else the first that exists under the dataset root, the
    working directory, the project and the installed share/cagnet. With `key`, a path found
    nowhere is an error naming every place tried and the `--set` key."""
    candidate = Path(path).expanduser()
    bases = [] if candidate.is_absolute() else \
        ([Path(root).expanduser().absolute()] if root else []) + [Path.cwd(), PROJECT_ROOT,
                                                                  INSTALLED_ROOT]
    for base in bases:
        if (base / candidate).exists():
            return base / candidate
    if key and not candidate.exists():
        tried = [str(base / candidate) for base in bases] or [str(candidate)]
        raise DataError(f"{key}: {path} not found (looked for {', '.join(tried)}); give its "
                        f"location with --set {key}=PATH")
    return candidate


def with_absolute_paths(config: Config) -> Config:
    """A copy of `config` whose file settings are absolute (where they exist), so that the
    run's config.yaml and checkpoints work from any folder."""
    config = copy.deepcopy(config)
    data = config.data
    data.root = str(Path(data.root).expanduser().absolute())
    for section, key, relative_to_root in (
            (data, "class_names", True), (data, "split", True), (data, "train_list", True),
            (data, "val_list", True), (data, "validation_list", True),
            (data, "label_names", True), (data, "sbd_root", False),
            (data, "pseudo_label_dir", False), (config.embeddings, "path", True),
            (config.model, "init", False), (config.pretrain, "corpus", True)):
        value = getattr(section, key)
        if value:
            found = resolve_path(value, data.root if relative_to_root else None)
            if found.exists():
                setattr(section, key, str(found.absolute()))
    model = config.model
    if model.pretrained not in ("none", "default") and Path(model.pretrained).expanduser().exists():
        model.pretrained = str(Path(model.pretrained).expanduser().absolute())
    source, _, factory = model.trunk.removeprefix("python:").rpartition(":")
    if model.trunk.startswith("python:") and source.endswith(".py") and Path(source).is_file():
        model.trunk = f"python:{Path(source).absolute()}:{factory}"
    return config


@dataclass
class Benchmark:
    """Everything that describes the classes of a run."""

    split: ClassSplit
    class_embeddings: np.ndarray  # (K, E) in model class order (seen then unseen)

    @property
    def embedding_dim(self) -> int:
        return int(self.class_embeddings.shape[1])


def build_split(config: Config) -> ClassSplit:
    """The class names and the seen / unseen / validation split of `config.data`."""
    data = config.data
    class_names = read_class_names(resolve_path(data.class_names, data.root, "data.class_names"))
    return read_split(resolve_path(data.split, data.root, "data.split"), class_names)


def build_benchmark(config: Config) -> Benchmark:
    """Class names, split and the class-embedding rows in model order."""
    split = build_split(config)
    path = resolve_path(config.embeddings.path, config.data.root, "embeddings.path")
    matrix, _ = load_class_embeddings(path, expected_rows=len(split.class_names))
    return Benchmark(split, np.asarray(matrix, dtype=np.float32)[list(split.model_ids)])


def holdout_ids(ids: list[str], count: int, seed: int) -> list[str]:
    """`count` training ids held out for validation: a seeded choice, in list order."""
    if count >= len(ids):
        raise DataError(f"data.validation_holdout: {count} ids held out of a training list of "
                        f"{len(ids)}: nothing would be left to train on")
    chosen = np.random.default_rng([seed, 4242]).choice(len(ids), count, replace=False)
    return [ids[index] for index in sorted(chosen)]


def build_dataset(data: DataConfig, split: ClassSplit, seed: int, part: str = "train",
                  eval_warp: int | None = None) -> SegmentationDataset:
    """The images of `part`: "train" (`data.train_list` minus the held-out validation ids),
    "validation" (`data.validation_list`, or the held-out ids) or "test" (`data.val_list`).
    With `eval_warp`, training images are only warped, like test images (for self-training).
    """
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset folder not found: {root.absolute()}; give it with "
                        "--set data.root=PATH")
    source = benchmarks.label_source(data, root, split.class_names)
    listed = {"test": data.val_list, "validation": data.validation_list}.get(part)
    ids = benchmarks.read_image_ids(resolve_path(listed or data.train_list, root), data, root)
    if not listed:
        held_out = set(holdout_ids(ids, data.validation_holdout, seed)) \
            if data.validation_holdout else set()
        keep = part == "validation"
        ids = [image_id for image_id in ids if (image_id in held_out) == keep]
    # The dataset renames mask values by data.label_map on load, before these lookups.
    known = split.known_ids() | set(data.label_map)
    if part != "train":
        return benchmarks.make_dataset(data, root, ids, source, split.test_lookup(), known,
                                       EvalTransform(tuple(data.mean_bgr), eval_warp or 513),
                                       seed)
    if data.drop_images_with_unseen:
        raw_unseen = [value for value in range(256)
                      if data.label_map.get(value, value) in split.unseen_ids]
        ids = benchmarks.drop_images_with_unseen(ids, source, raw_unseen,
                                                 data.on_bad_sample == "skip",
                                                 max(1, data.num_workers))
    lookup = split.train_lookup()
    if data.pseudo_label_dir and eval_warp is None:
        # The folder's maps never hold a true unseen label: they were built from the training
        # labels, where it is 255.
        folder = resolve_path(data.pseudo_label_dir)
        if not folder.is_dir():
            raise DataError(f"data.pseudo_label_dir: folder not found: {folder}")
        data = dataclasses.replace(data, layout="folders", label_dir=str(folder.resolve()),
                                   label_suffix=".png")
        source = benchmarks.label_source(data, root, split.class_names)
        lookup = split.test_lookup()
    transform = EvalTransform(tuple(data.mean_bgr), eval_warp) if eval_warp else \
        TrainTransform(tuple(data.mean_bgr), data.warp_size, data.crop_size, data.scale_min,
                       data.scale_max, data.flip, data.padding)
    return benchmarks.make_dataset(data, root, ids, source, lookup, known, transform, seed)


def build_eval_loader(config: Config, split: ClassSplit, part: str = "test") -> DataLoader:
    """Batches of warped images with their full-resolution labels (the evaluator's input)."""
    dataset = build_dataset(config.data, split, config.train.seed, part,
                            eval_warp=config.eval.warp_size)
    return DataLoader(dataset, batch_size=config.eval.batch_size, shuffle=False,
                      num_workers=config.data.num_workers, collate_fn=collate_samples)
