"""MSRC-v2 (MSRC-21) in the project's VOC-like layout. Source: the 591 `Images/<id>.bmp` and
Malisiewicz and Efros's cleaned masks `newsegmentations_mats/<id>_GT.mat` (BMVC 2007), from the
`MSRC_v2` folder of TonyZZX/MultiGraph_MultiLabel_Learning (commit df10559f). Licence:
non-commercial research only: the data is never committed, nor used by the tests (fake files)."""

import io
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from cagnet.datasets.label_sources import encode_index_png
from cagnet.datasets.splits import read_id_list
from cagnet.errors import DataError
from cagnet.utils.io import atomic_write_bytes, atomic_write_text

# Source class ids 1..23 in order; MSRC-21 makes horse and mountain void and numbers the rest 0..20.
SOURCE_CLASS_NAMES = ("building", "grass", "tree", "cow", "horse", "sheep", "sky", "mountain",
                      "aeroplane", "water", "face", "car", "bicycle", "flower", "sign", "bird",
                      "book", "chair", "road", "cat", "dog", "body", "boat")
CLASS_NAMES = tuple(name for name in SOURCE_CLASS_NAMES if name not in ("horse", "mountain"))
VOID = 255
UNSEEN_CLASSES = ("cow", "cat", "boat", "chair", "tree")
# Held-out seen classes for calibration: sheep stands in for cow (a grazing animal on grass),
# bird for cat and boat (a small object class seen against sky, water and grass).
VALIDATION_CLASSES = ("sheep", "bird")
SPLITS = ("train", "val", "test")
DEFAULT_LISTS = Path(__file__).resolve().parents[2] / "data" / "msrc"  # the checkout's lists
# Index = source class id (0 unused), value = MSRC-21 id or VOID.
SOURCE_TO_CLASS = np.array([VOID] + [CLASS_NAMES.index(name) if name in CLASS_NAMES else VOID
                                     for name in SOURCE_CLASS_NAMES], dtype=np.uint8)


def read_mask(mat_path: Path) -> tuple[np.ndarray, bool]:
    """MSRC-21 class mask (H, W) uint8 of one `_GT.mat` (`newseg`: segment ids 1..K,
    `newlabels`: source class of each segment) and whether its last segment was unlabelled
    (K-1 labels: it becomes void). DataError when unreadable or inconsistent."""
    try:
        content = scipy.io.loadmat(str(mat_path))
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{mat_path}: unreadable .mat file ({error})") from None
    if "newseg" not in content or "newlabels" not in content:
        raise DataError(f"{mat_path}: expected the keys 'newseg' and 'newlabels', found "
                        f"{sorted(key for key in content if not key.startswith('__'))}")
    segments, labels = np.asarray(content["newseg"]), np.asarray(content["newlabels"]).ravel()
    if segments.ndim != 2 or segments.size == 0 or not np.issubdtype(segments.dtype, np.integer):
        raise DataError(f"{mat_path}: 'newseg' must be a non-empty 2-D integer array, got "
                        f"shape {segments.shape} of {segments.dtype}")
    segment_count = int(segments.max())
    if int(segments.min()) < 1 or not np.array_equal(np.unique(segments),
                                                     np.arange(1, segment_count + 1)):
        raise DataError(f"{mat_path}: 'newseg' must use every segment id 1..{segment_count} "
                        f"exactly, found ids {np.unique(segments).tolist()[:12]}")
    if labels.size not in (segment_count, segment_count - 1):
        raise DataError(f"{mat_path}: 'newlabels' has {labels.size} entries for "
                        f"{segment_count} segments (expected {segment_count} or "
                        f"{segment_count - 1})")
    if labels.size and (labels.min() < 1 or labels.max() > len(SOURCE_CLASS_NAMES)):
        raise DataError(f"{mat_path}: 'newlabels' must hold class ids 1..23, got "
                        f"{sorted(set(labels.tolist()))}")
    segment_to_class = np.full(segment_count + 1, VOID, dtype=np.uint8)
    segment_to_class[1:labels.size + 1] = SOURCE_TO_CLASS[labels.astype(np.int64)]
    return segment_to_class[segments], labels.size == segment_count - 1


def prepare_msrc(source: Path, out: Path, lists: Path = DEFAULT_LISTS) -> dict:
    """Write MSRC-21 under `out`: `JPEGImages/<id>.png` (lossless copies), `SegmentationClass/
    <id>.png` (palette PNGs, 255 = void), `ImageSets/Segmentation/{train,val,test}.txt` (copied
    from `lists`: Shotton et al.'s split, see data/msrc/README.md), `class_names.txt` and
    `split.yaml`. `source` is the `MSRC_v2` folder or its parent. Returns image counts per split,
    image sizes, per-class and void pixels and the count of masks with an unlabelled last
    segment. DataError for a missing or malformed file, an image and mask of different sizes,
    or an id in two split lists."""
    source, out = Path(source), Path(out)
    root = source if (source / "Images").is_dir() else source / "MSRC_v2"
    for folder in (root / "Images", root / "newsegmentations_mats"):
        if not folder.is_dir():
            raise DataError(f"MSRC folder not found: {folder} (expected MSRC_v2 with "
                            "Images/*.bmp and newsegmentations_mats/*_GT.mat)")
    split_ids = {split: read_id_list(Path(lists) / f"{split}.txt") for split in SPLITS}
    all_ids = [image_id for split in SPLITS for image_id in split_ids[split]]
    if len(set(all_ids)) != len(all_ids):
        raise DataError(f"{lists}: an image id occurs in more than one of train/val/test")
    class_pixels = np.zeros(len(CLASS_NAMES) + 1, dtype=np.int64)  # last entry: void
    image_sizes: dict[str, int] = {}
    unlabelled_last_segment = 0
    for image_id in all_ids:
        image_path = root / "Images" / f"{image_id}.bmp"
        mat_path = root / "newsegmentations_mats" / f"{image_id}_GT.mat"
        for path in (image_path, mat_path):
            if not path.is_file():
                raise DataError(f"missing file {path} for image id {image_id!r} in {lists}")
        try:
            with Image.open(image_path) as opened:
                image = opened.convert("RGB")
        except OSError as error:
            raise DataError(f"{image_path}: unreadable image ({error})") from None
        mask, unlabelled = read_mask(mat_path)
        if mask.shape != (image.height, image.width):
            raise DataError(f"{mat_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                            f"{image_path.name} is {image.width}x{image.height} (W x H)")
        unlabelled_last_segment += unlabelled
        size_key = f"{image.width}x{image.height}"
        image_sizes[size_key] = image_sizes.get(size_key, 0) + 1
        class_pixels += np.bincount(np.minimum(mask.ravel(), len(CLASS_NAMES)),
                                    minlength=len(CLASS_NAMES) + 1)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(out / "JPEGImages" / f"{image_id}.png", buffer.getvalue())
        atomic_write_bytes(out / "SegmentationClass" / f"{image_id}.png", encode_index_png(mask))
    for split in SPLITS:
        atomic_write_text(out / "ImageSets" / "Segmentation" / f"{split}.txt",
                          "\n".join(split_ids[split]) + "\n")
    atomic_write_text(out / "class_names.txt", "\n".join(CLASS_NAMES) + "\n")
    seen = [name for name in CLASS_NAMES if name not in UNSEEN_CLASSES]
    atomic_write_text(out / "split.yaml", "# MSRC-21 zero-shot split (unseen classes fixed)\n"
                      f"seen: [{', '.join(seen)}]\nunseen: [{', '.join(UNSEEN_CLASSES)}]\n"
                      f"validation: [{', '.join(VALIDATION_CLASSES)}]\n")
    return {"images": len(all_ids), "splits": {split: len(split_ids[split]) for split in SPLITS},
            "image_sizes": image_sizes, "unlabelled_last_segment": unlabelled_last_segment,
            "class_pixels": dict(zip(CLASS_NAMES, class_pixels[:-1].tolist())),
            "void_pixels": int(class_pixels[-1])}
