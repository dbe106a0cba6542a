"""`cagnet audit`: prove that no unseen-class label value reaches a training loss, by running
the real training pipeline (label reader, lookup table, warp / scale / crop / flip) over the
training list, each image once, and counting the values of the final targets (the losses see
only these, nearest-resized: a clean audit covers every loss)."""

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from cagnet.datasets.build import build_dataset, resolve_path
from cagnet.config import Config
from cagnet.datasets.benchmarks import read_dataset_label
from cagnet.datasets.splits import IGNORE_INDEX, ClassSplit, read_class_names, read_split


@dataclass
class AuditReport:
    """Counts and violations of one audit; `ok` is False when anything could reach a loss."""

    name: str
    split: ClassSplit
    images: int = 0
    target_counts: Counter = field(default_factory=Counter)  # target value -> pixels
    raw_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        names, targets = self.split.class_names, sorted(self.target_counts.items())
        return {
            "dataset": self.name, "images": self.images, "ok": self.ok,
            "num_seen": self.split.num_seen, "violations": self.violations,
            "target_counts": {str(value): int(count) for value, count in targets},
            "target_classes": {self.split.model_class_names[value]: int(count)
                               for value, count in targets if 0 <= value < self.split.num_seen},
            "raw_counts": {name: int(self.raw_counts[i]) for i, name in enumerate(names)}
                          | {"255": int(self.raw_counts[IGNORE_INDEX])},
            "unseen_raw_pixels": int(self.raw_counts[list(self.split.unseen_ids)].sum()),
        }


def lookup_violations(split: ClassSplit) -> list[str]:
    """Problems of the training lookup table: it must send the k-th seen id to k and every other
    value (unseen classes, background, void) to 255."""
    lookup, names = split.train_lookup(), split.class_names
    seen = dict(zip(split.seen_ids, range(split.num_seen)))
    return [f"training lookup maps dataset id {value} "
            f"({names[value] if value < len(names) else 'not a class'}) to "
            f"{int(lookup[value])}, expected {seen.get(value, IGNORE_INDEX)}"
            for value in range(256) if int(lookup[value]) != seen.get(value, IGNORE_INDEX)]


def audit_training_data(config: Config, max_images: int = 0, show_progress: bool = False
                        ) -> AuditReport:
    """Run the training data pipeline over the training list (draw = index) and audit its
    targets: every value must be a seen index 0..S-1 or 255. Also checks the lookup table and
    counts the mask pixels per class (after `data.label_map`); with
    `data.drop_images_with_unseen` no kept image may hold an unseen pixel at all."""
    from tqdm import tqdm

    data = config.data
    names = read_class_names(resolve_path(data.class_names, data.root))
    split = read_split(resolve_path(data.split, data.root), names)
    report = AuditReport(config.name, split)
    report.violations += lookup_violations(split)
    dataset = build_dataset(data, split, config.train.seed)
    count = min(len(dataset), max_images) if max_images else len(dataset)
    index_of = {image_id: index for index, image_id in enumerate(dataset.ids)}
    loader = DataLoader(dataset, batch_size=None, sampler=[(i, i) for i in range(count)],
                        num_workers=data.num_workers)
    allowed = set(range(split.num_seen)) | {IGNORE_INDEX}
    for sample in tqdm(loader, total=count, disable=not show_progress, desc="audit"):
        values, counts = torch.unique(sample["label"], return_counts=True)
        found = dict(zip(values.tolist(), counts.tolist()))
        report.target_counts.update(found)
        bad = sorted(set(found) - allowed)
        if bad:
            report.violations.append(f"{sample['id']}: training target holds values {bad}, "
                                     f"outside 0..{split.num_seen - 1} and 255")
        raw = read_dataset_label(dataset, index_of[sample["id"]])
        report.raw_counts += np.bincount(raw.reshape(-1), minlength=256)
        report.images += 1
    unseen_raw = int(report.raw_counts[list(split.unseen_ids)].sum())
    if data.drop_images_with_unseen and unseen_raw:
        report.violations.append(f"data.drop_images_with_unseen is set, but the kept training "
                                 f"images hold {unseen_raw} unseen-class pixels")
    return report


def format_audit(report: AuditReport) -> str:
    """The audit as a table: per dataset class its role, raw mask pixels and target pixels."""
    split = report.split
    target_of = {class_id: k for k, class_id in enumerate(split.seen_ids)}
    unseen = set(split.unseen_ids)
    lines = [f"audit of the training pipeline of {report.name}: {report.images} images, "
             f"{split.num_seen} seen classes (targets 0..{split.num_seen - 1}, 255 = ignored)",
             "raw pixels: source masks at original resolution; target pixels: final training "
             "targets after lookup, warp, scale, crop and flip",
             f"  {'id':>3}  {'class':<20} {'role':<8} {'target':>6} {'raw pixels':>14} "
             f"{'target pixels':>14}"]
    for class_id, name in enumerate(split.class_names):
        target = target_of.get(class_id, IGNORE_INDEX)
        role = "seen" if class_id in target_of else "unseen" if class_id in unseen else "ignored"
        pixels = f"{report.target_counts.get(target, 0):,}" if target != IGNORE_INDEX else "-"
        lines.append(f"  {class_id:>3}  {name[:20]:<20} {role:<8} {target:>6} "
                     f"{int(report.raw_counts[class_id]):>14,} {pixels:>14}")
    lines.append(f"  255  {'void':<20} {'ignored':<8} {IGNORE_INDEX:>6} "
                 f"{int(report.raw_counts[IGNORE_INDEX]):>14,} "
                 f"{report.target_counts.get(IGNORE_INDEX, 0):>14,}")
    unseen_raw = int(report.raw_counts[list(unseen)].sum())
    lines.append(f"unseen-class pixels in the masks: {unseen_raw:,}; unseen values in the "
                 f"targets: {'none' if report.ok else 'SEE VIOLATIONS'}")
    if report.violations:
        lines.append(f"{len(report.violations)} violations:")
        lines += [f"  {violation}" for violation in report.violations]
    else:
        lines.append("OK: every training target value is a seen-class index or 255")
    return "\n".join(lines)
