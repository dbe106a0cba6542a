"""`cagnet data check`: verify a dataset on disk before spending GPU hours on it: the class list,
split and label source, and for every listed id that the image decodes and the mask reads, fits
the image and holds only class ids or 255. Every problem is collected; it also counts pixels and
images per class and split, and the training pixels of unseen classes (mapped to 255)."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cagnet.datasets.build import resolve_path
from cagnet.config import Config
from cagnet.datasets import benchmarks
from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.splits import IGNORE_INDEX, ClassSplit, read_class_names, read_split
from cagnet.errors import CagnetError, DataError

# Image counts of the official splits (benchmarks.md §1), compared when a whole split is read.
EXPECTED_IMAGES = {"voc12": {"train": 10582, "val": 1449}, "context": {"train": 4998, "val": 5105},
                   "cocostuff": {"train": 118287, "val": 5000}}


@dataclass
class SplitSummary:
    """Counts over the checked ids of one id list."""

    list_path: str
    listed: int = 0
    checked: int = 0
    unseen_images: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    images: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))


@dataclass
class CheckReport:
    """Everything `cagnet data check` found; `problems` empty means the dataset is usable."""

    name: str
    root: str
    layout: str
    split: ClassSplit | None = None
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def unseen_training_pixels(self) -> tuple[int, int, int]:
        """(unseen pixels, all labelled-or-void pixels, images holding unseen pixels) of train."""
        train = self.splits.get("train")
        if train is None or self.split is None:
            return 0, 0, 0
        unseen = list(self.split.unseen_ids)
        return int(train.pixels[unseen].sum()), int(train.pixels.sum()), int(train.unseen_images)

    def to_dict(self) -> dict:
        names = list(self.split.class_names) if self.split else []
        unseen, total, images = self.unseen_training_pixels()
        return {
            "dataset": self.name, "root": self.root, "layout": self.layout,
            "problems": self.problems, "notes": self.notes,
            "unseen_training_pixels": unseen, "training_pixels": total,
            "training_images_with_unseen": images,
            "splits": {key: {"list": s.list_path, "listed": s.listed, "checked": s.checked,
                             "pixels": {name: int(s.pixels[i]) for i, name in enumerate(names)}
                             | {"255": int(s.pixels[IGNORE_INDEX])},
                             "images": {name: int(s.images[i]) for i, name in enumerate(names)}}
                       for key, s in self.splits.items()},
        }


def _inspect(dataset_paths: tuple[Path, Path], image_id: str, source, known: np.ndarray
             ) -> tuple[np.ndarray | None, list[str]]:
    """Read one sample; return its label histogram (256,) (None if unreadable) and problems."""
    image_folder, suffix = dataset_paths
    image_path = image_folder / f"{image_id}{suffix}"
    problems, image, label = [], None, None
    try:
        image = read_image_bgr(image_path)
    except DataError as error:
        problems.append(str(error))
    try:
        label = source.read(image_id)
    except DataError as error:
        problems.append(str(error))
    if label is None:
        return None, problems
    if image is not None:
        try:
            benchmarks.check_mask(label, image.shape, known, source.path(image_id), image_path)
        except DataError as error:
            problems.append(str(error))
    return np.bincount(label.reshape(-1), minlength=256), problems


def _check_split(report: CheckReport, key: str, list_value: str, config: Config, root: Path,
                 source, max_images: int, workers: int) -> None:
    data = config.data
    list_path = resolve_path(list_value, root)
    summary = report.splits[key] = SplitSummary(str(list_path))
    try:
        ids = benchmarks.read_image_ids(list_path, data, root)
    except DataError as error:
        report.problems.append(str(error))
        return
    summary.listed = len(ids)
    known = np.array(sorted(report.split.known_ids()))
    unseen = list(report.split.unseen_ids)
    chosen = ids[:max_images] if max_images else ids
    paths = (root / data.image_dir, data.image_suffix)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for histogram, problems in pool.map(lambda i: _inspect(paths, i, source, known), chosen):
            report.problems.extend(problems)
            if histogram is None:
                continue
            summary.checked += 1
            summary.pixels += histogram
            summary.images += histogram > 0
            summary.unseen_images += int(histogram[unseen].sum() > 0)
    if key != "train" and not max_images and summary.checked:
        # an unseen class absent from the test images has no IoU, and U-mIoU changes meaning
        report.problems += [f"{key} ({list_path}): unseen class "
                            f"{report.split.class_names[class_id]!r} has no pixel in these "
                            "images: its IoU is undefined"
                            for class_id in unseen if not summary.pixels[class_id]]
    expected = EXPECTED_IMAGES.get(report.name, {}).get(key)
    if expected and not max_images and summary.listed != expected:
        report.notes.append(f"{key}: {summary.listed} ids listed in {list_path}; the official "
                            f"{report.name} {key} split has {expected}")


def check_dataset(config: Config, max_images: int = 0, workers: int = 4) -> CheckReport:
    """Check the dataset of `config.data` (every id list it names); see the module docstring."""
    data = config.data
    root = Path(data.root)
    report = CheckReport(config.name, str(root), data.layout)
    if not root.is_dir():
        report.problems.append(f"data.root: dataset folder not found: {root}")
        return report
    try:
        names = read_class_names(resolve_path(data.class_names, root))
        report.split = read_split(resolve_path(data.split, root), names)
        source = benchmarks.label_source(data, root, names)
    except CagnetError as error:
        report.problems.append(str(error))
        return report
    report.problems += [f"folder not found: {folder}" for folder in
                        (root / data.image_dir, root / data.label_dir) if not folder.is_dir()]
    for key, list_value in (("train", data.train_list), ("val", data.val_list),
                            ("validation", data.validation_list)):
        if list_value:
            _check_split(report, key, list_value, config, root, source, max_images, workers)
    return report


def format_check_report(report: CheckReport) -> str:
    """A human-readable summary: image counts, the class histogram, unseen pixels, problems."""
    lines = [f"dataset {report.name} at {report.root} (layout {report.layout})"]
    lines += [f"  {key}: {summary.listed} ids listed ({summary.list_path}), {summary.checked} read"
              for key, summary in report.splits.items()]
    if report.split is not None and any(s.checked for s in report.splits.values()):
        lines += _histogram_lines(report)
    lines += [f"note: {note}" for note in report.notes]
    if report.problems:
        count = len(report.problems)
        lines.append(f"{count} problem{'s' if count != 1 else ''}:")
        lines += [f"  {problem}" for problem in report.problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def _histogram_lines(report: CheckReport) -> list[str]:
    split = report.split
    roles = {i: "seen" for i in split.seen_ids} | {i: "unseen" for i in split.unseen_ids}
    keys = list(report.splits)
    header = f"  {'id':>3}  {'class':<20} {'role':<8}" + "".join(
        f" {key + ' pixels':>16} {key + ' images':>13}" for key in keys)
    lines = ["class histogram (raw dataset ids):", header]
    for class_id, name in list(enumerate(split.class_names)) + [(IGNORE_INDEX, "void (255)")]:
        lines.append(f"  {class_id:>3}  {name[:20]:<20} {roles.get(class_id, 'ignored'):<8}"
                     + "".join(f" {int(report.splits[key].pixels[class_id]):>16,} "
                               f"{int(report.splits[key].images[class_id]):>13,}"
                               for key in keys))
    unseen, total, images = report.unseen_training_pixels()
    share = 100.0 * unseen / total if total else 0.0
    lines.append(f"training pixels of unseen classes: {unseen:,} of {total:,} ({share:.2f} %) "
                 f"in {images:,} images: mapped to 255, they reach no loss"
                 " (with data.drop_images_with_unseen those images are removed instead)")
    return lines
