"""One-off preparation of the official archives: VOC 2012 + SBD `train_aug` and
`SegmentationClassAug/`, COCO-Stuff id lists, and the original release's `.npy` split lists."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cagnet.datasets.benchmarks import derive_split_ids, find_sbd_dataset
from cagnet.datasets.label_sources import encode_index_png, read_sbd_mat
from cagnet.datasets.splits import read_id_list
from cagnet.errors import DataError
from cagnet.utils.io import atomic_write_bytes, atomic_write_text

VOC_LISTS = Path("ImageSets") / "Segmentation"


@dataclass
class VocPreparation:
    """What `prepare_voc` did."""

    train_aug: list[str]
    val: list[str]
    sources: dict[str, int]  # list name -> id count (sbd_train, sbd_val, voc_train, voc_val)
    copied_from_voc: int = 0
    converted_from_sbd: int = 0
    list_path: Path = field(default_factory=Path)


def _convert_one(voc_png: Path, sbd_mat: Path, target: Path) -> str:
    if voc_png.is_file():
        atomic_write_bytes(target, voc_png.read_bytes())
        return "voc"
    atomic_write_bytes(target, encode_index_png(read_sbd_mat(sbd_mat)))
    return "sbd"


def prepare_voc(voc_root: str | Path, sbd_root: str | Path, label_dir: str = "SegmentationClass",
                out_label_dir: str = "SegmentationClassAug", list_name: str = "train_aug.txt",
                workers: int = 4) -> VocPreparation:
    """Write the 10,582 train_aug ids, (SBD train ∪ SBD val ∪ VOC train) − VOC val (8,498 +
    2,857 + 1,464 ids minus the 1,449 validation ids), to `ImageSets/Segmentation/train_aug.txt`
    and one index PNG per train_aug and val id to `SegmentationClassAug/`: VOC's own PNG (copied
    byte for byte, with its 255 boundaries) where it exists, else SBD's `cls/<id>.mat` (no
    boundary label). Ids with no label are all reported in one DataError before any write."""
    voc_root, sbd = Path(voc_root), find_sbd_dataset(sbd_root)
    lists = {"voc_train": voc_root / VOC_LISTS / "train.txt",
             "voc_val": voc_root / VOC_LISTS / "val.txt",
             "sbd_train": sbd / "train.txt", "sbd_val": sbd / "val.txt"}
    missing_lists = [str(path) for path in lists.values() if not path.is_file()]
    if missing_lists:
        raise DataError("prepare-voc: id lists not found: " + ", ".join(missing_lists))
    ids = {name: read_id_list(path) for name, path in lists.items()}
    train_aug = sorted((set(ids["sbd_train"]) | set(ids["sbd_val"]) | set(ids["voc_train"]))
                       - set(ids["voc_val"]))
    wanted = train_aug + sorted(set(ids["voc_val"]) - set(train_aug))
    voc_labels, sbd_labels = voc_root / label_dir, sbd / "cls"
    problems = [f"{image_id}: neither {voc_labels / (image_id + '.png')} nor "
                f"{sbd_labels / (image_id + '.mat')}" for image_id in wanted
                if not (voc_labels / f"{image_id}.png").is_file()
                and not (sbd_labels / f"{image_id}.mat").is_file()]
    problems += [f"{image_id}: validation id without a VOC annotation "
                 f"{voc_labels / (image_id + '.png')}" for image_id in ids["voc_val"]
                 if not (voc_labels / f"{image_id}.png").is_file()]
    if problems:
        raise DataError(f"prepare-voc: {len(problems)} ids have no label:\n  "
                        + "\n  ".join(problems))
    out = voc_root / out_label_dir
    with ThreadPoolExecutor(max(1, workers)) as pool:
        kinds = list(pool.map(lambda i: _convert_one(voc_labels / f"{i}.png",
                                                     sbd_labels / f"{i}.mat", out / f"{i}.png"),
                              wanted))
    list_path = atomic_write_text(voc_root / VOC_LISTS / list_name, "\n".join(train_aug) + "\n")
    return VocPreparation(train_aug, list(ids["voc_val"]),
                          {name: len(values) for name, values in ids.items()},
                          kinds.count("voc"), kinds.count("sbd"), list_path)


def prepare_cocostuff(root: str | Path, out_dir: str | Path | None = None,
                      splits: tuple[str, ...] = ("train2017", "val2017"),
                      image_dir: str = "images", label_dir: str = "annotations"
                      ) -> dict[str, int]:
    """Write `<out_dir>/<split>.txt` (ids `<split>/<12-digit id>`) for every split from the
    COCO-Stuff 164k folders; returns the id count per split."""
    out = Path(out_dir) if out_dir else Path(root)
    counts = {}
    for split in splits:
        ids = derive_split_ids(Path(root), image_dir, label_dir, split)
        atomic_write_text(out / f"{split}.txt", "\n".join(ids) + "\n")
        counts[split] = len(ids)
    return counts


def convert_npy_list(npy_path: str | Path, out_path: str | Path, keep_folder: bool = False
                     ) -> int:
    """The original release's split list (a `.npy` array of annotation paths, e.g.
    `/users/pascal_context/annotations/train/2010_002746`) -> our id list: one file stem per
    line (`2010_002746`), or `folder/stem` with `keep_folder` (COCO-Stuff: `val2017/<id>`).
    Read with `allow_pickle=False`. Returns the number of ids."""
    import numpy as np

    try:
        paths = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{npy_path}: not a .npy array of paths ({error})") from None
    if paths.ndim != 1 or paths.dtype.kind != "U" or not len(paths):
        raise DataError(f"{npy_path}: expected a 1-d array of path strings, got "
                        f"{paths.dtype} {paths.shape}")
    ids = [f"{Path(path).parent.name}/{Path(path).stem}" if keep_folder else Path(path).stem
           for path in paths.tolist()]
    atomic_write_text(out_path, "".join(f"{image_id}\n" for image_id in ids))
    return len(ids)
