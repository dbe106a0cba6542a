"""Label readers of the official benchmark formats: an image id -> a uint8 (H, W) mask of
dataset label ids (`LabelSource`): index PNGs, VOC PNG else SBD `.mat` (no 255 boundary), and
Pascal-Context's 459-label `.mat` mapped by name. Also the Pascal-VOC colour map.
"""

import io
import re
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from cagnet.datasets.images import read_label
from cagnet.errors import DataError

# Names a class-name file uses that the 459-label file spells differently. Candidates are tried
# in order after the name itself (compared without case, spaces, underscores and hyphens).
CONTEXT_ALIASES: dict[str, tuple[str, ...]] = {
    "diningtable": ("dining table", "table"), "tvmonitor": ("tv monitor", "tv", "monitor"),
    "pottedplant": ("potted plant", "plant"), "aeroplane": ("airplane",),
    "motorbike": ("motorcycle",), "shelves": ("shelf",)}
# Class-name-file entries that stand for "every other label" (id 0 of the Context label sets).
CONTEXT_BACKGROUND_NAMES = ("background", "unlabel", "unlabeled", "unlabelled")


def voc_colour_map(size: int = 256) -> np.ndarray:
    """The standard Pascal-VOC palette: (size, 3) uint8, row i = colour of label id i."""
    index, colours = np.arange(size), np.zeros((size, 3), dtype=np.int64)
    for bit in range(8):  # bit 7 - b of channel c (R, G, B) is bit 3 * b + c of the label id
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colours.astype(np.uint8)


def encode_index_png(mask: np.ndarray) -> bytes:
    """A uint8 (H, W) label mask as palette-PNG bytes with the VOC colour map."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(voc_colour_map().reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _load_mat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        return scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises many types for truncated or foreign files
        raise DataError(f"label file {path} is corrupt or not a MATLAB file: {error}") from None


def _as_mask(value: object, path: Path, what: str) -> np.ndarray:
    array = np.asarray(value)
    while array.dtype == object and array.size == 1:
        array = np.asarray(array.reshape(-1)[0])
    if array.ndim != 2 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: {what} is not a 2-D integer label map (got dtype "
                        f"{array.dtype}, shape {array.shape})")
    return array


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """An SBD `cls/<id>.mat` file (`GTcls.Segmentation`) -> uint8 (H, W) VOC label ids 0..20."""
    path = Path(path)
    content = _load_mat(path)
    try:
        segmentation = content["GTcls"]["Segmentation"]
    except (KeyError, ValueError, IndexError, TypeError):
        raise DataError(f"{path}: expected an SBD class annotation with GTcls.Segmentation"
                        ) from None
    mask = _as_mask(segmentation, path, "GTcls.Segmentation")
    if mask.min() < 0 or mask.max() > 255:
        raise DataError(f"{path}: label values {int(mask.min())}..{int(mask.max())} do not fit "
                        "in 0..255")
    return mask.astype(np.uint8)


def read_context_mat(path: str | Path) -> np.ndarray:
    """A Pascal-Context `trainval/<id>.mat` file -> int64 (H, W) 459-label ids."""
    path = Path(path)
    content = _load_mat(path)
    if "LabelMap" not in content:
        raise DataError(f"{path}: expected a Pascal-Context annotation with key 'LabelMap', "
                        f"found {sorted(k for k in content if not k.startswith('__'))}")
    return _as_mask(content["LabelMap"], path, "LabelMap").astype(np.int64)


def read_context_label_names(path: str | Path) -> dict[int, str]:
    """The 459-label names file of Pascal-Context (`labels.txt`, lines `<id>: <name>`)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"Pascal-Context label-name file not found: {path} (data.label_names: "
                        "the labels.txt shipped with trainval.tar.gz)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"Pascal-Context label-name file {path} is unreadable: {error}") from None
    names: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(.+?)\s*", line)
        if match is None:
            raise DataError(f"{path}, line {number}: expected '<id>: <name>', got {line!r}")
        names[int(match.group(1))] = match.group(2)
    if not names:
        raise DataError(f"Pascal-Context label-name file {path} is empty")
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def context_label_lookup(label_names: dict[int, str], class_names: Sequence[str],
                         source: str = "labels.txt") -> tuple[np.ndarray, dict[str, str]]:
    """A lookup (max_label + 1,) uint8 of the 459 Context labels onto the classes, and per class
    name the label name it took: its own name (ignoring case, spaces, underscores and hyphens),
    else its first alias in `CONTEXT_ALIASES`. Labels no class takes become 0 with a background
    class 0 (`background`, `unlabel`), else 255."""
    by_name = {_normalise(name): label for label, name in label_names.items()}
    has_background = class_names[0].lower() in CONTEXT_BACKGROUND_NAMES
    lookup = np.full(max(label_names) + 1, 0 if has_background else 255, dtype=np.uint8)
    matched: dict[str, str] = {}
    missing = []
    for class_id, class_name in enumerate(class_names):
        if class_id == 0 and has_background:
            continue
        candidates = (class_name,) + CONTEXT_ALIASES.get(_normalise(class_name), ())
        label = next((by_name[_normalise(c)] for c in candidates if _normalise(c) in by_name), None)
        if label is None:
            missing.append(class_name)
            continue
        if label_names[label] in matched.values():
            raise DataError(f"{source}: label {label_names[label]!r} matches two classes "
                            f"of the class-name file (the second is {class_name!r})")
        lookup[label] = class_id
        matched[class_name] = label_names[label]
    if missing:
        raise DataError(f"{source}: no Pascal-Context label matches the classes {missing} "
                        f"(tried the names and the aliases {CONTEXT_ALIASES})")
    return lookup, matched


class LabelSource(Protocol):
    """Where the mask of an image id lives and how to read it."""

    def path(self, image_id: str) -> Path: ...

    def read(self, image_id: str) -> np.ndarray: ...


class PngLabels:
    """Index PNGs `<folder>/<id><suffix>` (palette "P" or grey "L")."""

    def __init__(self, folder: Path, suffix: str = ".png") -> None:
        self.folder, self.suffix = Path(folder), suffix

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}{self.suffix}"

    def read(self, image_id: str) -> np.ndarray:
        """uint8 (H, W) label ids."""
        return read_label(self.path(image_id))


class VocSbdLabels:
    """VOC's PNG `<voc_folder>/<id>.png` when it exists, else SBD's `<sbd_cls>/<id>.mat`."""

    def __init__(self, voc_folder: Path, sbd_cls_folder: Path, suffix: str = ".png") -> None:
        self.voc = PngLabels(voc_folder, suffix)
        self.sbd_cls_folder = Path(sbd_cls_folder)

    def path(self, image_id: str) -> Path:
        png = self.voc.path(image_id)
        return png if png.is_file() else self.sbd_cls_folder / f"{image_id}.mat"

    def read(self, image_id: str) -> np.ndarray:
        """uint8 (H, W) label ids 0..20 (and 255 on VOC's boundaries)."""
        path = self.path(image_id)
        if path.suffix == ".mat":
            if not path.is_file():
                raise DataError(f"label mask not found for {image_id}: neither "
                                f"{self.voc.path(image_id)} nor {path}")
            return read_sbd_mat(path)
        return read_label(path)


class ContextMatLabels(PngLabels):
    """Pascal-Context `<folder>/<id>.mat` (key `LabelMap`, 459 labels) mapped through `lookup`."""

    def __init__(self, folder: Path, lookup: np.ndarray, suffix: str = ".mat") -> None:
        super().__init__(folder, suffix)
        self.lookup = lookup

    def read(self, image_id: str) -> np.ndarray:
        """uint8 (H, W) class ids of the recipe's class-name file."""
        path = self.path(image_id)
        labels = read_context_mat(path)
        if labels.min() < 0 or labels.max() >= len(self.lookup):
            raise DataError(f"{path}: LabelMap values {int(labels.min())}..{int(labels.max())} "
                            f"are outside the label-name file's ids 0..{len(self.lookup) - 1}")
        return self.lookup[labels]
