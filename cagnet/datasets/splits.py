"""Class lists, seen/unseen splits, id lists, and the protocol's 256-entry label lookups:
training maps the k-th seen class id -> k and everything else (background, unseen, void) -> 255,
so no unseen label value can reach a loss; test maps seen -> 0..S-1, unseen -> S..S+U-1.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from cagnet.errors import DataError

IGNORE_INDEX = 255


def read_class_names(path: str | Path) -> list[str]:
    """Read a class-name file: line i is the name of label id i (VOC: line 0 `background`)."""
    path = Path(path)
    names = [line.strip() for line in _read_lines(path, "class-name file")]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DataError(f"class-name file {path} is empty: expected one class name per line")
    for line_number, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{path}, line {line_number}: empty class name (line i names label "
                            f"id i - 1, so blank lines are not allowed)")
    for line_number, name in enumerate(names, start=1):
        if any(ord(character) < 32 for character in name):
            raise DataError(f"{path}, line {line_number}: class name {name!r} contains a "
                            "control character")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate class names {duplicates}")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: {len(names)} classes, but label ids must stay below 255")
    return names


@dataclass(frozen=True)
class ClassSplit:
    """Seen / unseen / validation classes as dataset label ids, with their names. Model class
    order is `seen_ids` (split-file order) followed by `unseen_ids`."""

    class_names: tuple[str, ...]
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    validation_ids: tuple[int, ...] = ()

    @property
    def model_ids(self) -> tuple[int, ...]:
        """Dataset ids in model class order (seen then unseen)."""
        return self.seen_ids + self.unseen_ids

    @property
    def model_class_names(self) -> list[str]:
        return [self.class_names[i] for i in self.model_ids]

    @property
    def num_seen(self) -> int:
        return len(self.seen_ids)

    @property
    def num_unseen(self) -> int:
        return len(self.unseen_ids)

    def train_lookup(self) -> np.ndarray:
        """(256,) uint8: seen id -> its index 0..S-1, everything else -> 255."""
        lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lookup[list(self.seen_ids)] = np.arange(self.num_seen)
        return lookup

    def test_lookup(self) -> np.ndarray:
        """(256,) uint8: seen ids -> 0..S-1, unseen ids -> S..S+U-1, everything else -> 255."""
        lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lookup[list(self.model_ids)] = np.arange(len(self.model_ids))
        return lookup

    def known_ids(self) -> set[int]:
        """Label values a mask may legitimately contain: every class id and 255."""
        return set(range(len(self.class_names))) | {IGNORE_INDEX}


def read_split(path: str | Path, class_names: Sequence[str]) -> ClassSplit:
    """Read a split file (`seen`, `unseen`, optional `validation`: lists of class names from the
    class-name file, or label ids)."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise DataError(f"split file {path} is unreadable: "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                        ) from None
    if not isinstance(content, dict) or "seen" not in content or "unseen" not in content:
        raise DataError(f"split file {path}: expected a mapping with 'seen' and 'unseen' lists")
    unknown = sorted(map(repr, set(content) - {"seen", "unseen", "validation"}))
    if unknown:
        raise DataError(f"split file {path}: unknown key {unknown[0]}; expected seen, unseen, "
                        "validation")
    ids = {key: _resolve_ids(path, key, content.get(key) or [], class_names)
           for key in ("seen", "unseen", "validation")}
    if not ids["seen"]:
        raise DataError(f"split file {path}: 'seen' is empty")
    overlap = set(ids["seen"]) & set(ids["unseen"])
    if overlap:
        names = sorted(class_names[i] for i in overlap)
        raise DataError(f"split file {path}: classes both seen and unseen: {names}")
    stray = set(ids["validation"]) - set(ids["seen"])
    if stray:
        names = sorted(class_names[i] for i in stray)
        raise DataError(f"split file {path}: validation classes must be seen classes, "
                        f"got {names}")
    return ClassSplit(tuple(class_names), ids["seen"], ids["unseen"], ids["validation"])


def _resolve_ids(path: Path, key: str, entries: object, class_names: Sequence[str]
                 ) -> tuple[int, ...]:
    if not isinstance(entries, list):
        raise DataError(f"split file {path}: '{key}' must be a list, got {entries!r}")
    ids = []
    for entry in entries:
        if isinstance(entry, int) and not isinstance(entry, bool):
            if not 0 <= entry < len(class_names):
                raise DataError(f"split file {path}: '{key}' id {entry} is not a class id "
                                f"(0..{len(class_names) - 1})")
            ids.append(entry)
        elif isinstance(entry, str) and entry in class_names:
            ids.append(class_names.index(entry))
        else:
            raise DataError(f"split file {path}: '{key}' entry {entry!r} is not in the "
                            "class-name file")
    if len(set(ids)) != len(ids):
        raise DataError(f"split file {path}: '{key}' lists a class twice")
    return tuple(ids)


def read_id_list(path: str | Path) -> list[str]:
    """Read an image-id list (one id per line); one error names every id that would escape the
    dataset root (absolute, `..`) or holds control characters."""
    path = Path(path)
    ids, bad = [], []
    for line_number, line in enumerate(_read_lines(path, "image list"), start=1):
        item = line.strip().split()[0] if line.strip() else ""
        if not item:
            continue
        if Path(item).is_absolute() or ".." in Path(item).parts or "\\" in item \
                or any(ord(character) < 32 for character in item):
            bad.append(f"line {line_number}: {item!r}")
        ids.append(item)
    if bad:
        raise DataError(f"{path}: {len(bad)} ids would escape the dataset root or hold control "
                        f"characters (expected relative ids without '..'): {'; '.join(bad[:20])}")
    if not ids:
        raise DataError(f"image list {path} is empty: expected one image id per line")
    return ids


def _read_lines(path: Path, what: str) -> list[str]:
    """A UTF-8 text file's lines, split on newlines only (line i is entry i: Unicode line
    separators inside a line must not shift the numbering)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path} is unreadable: {error}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
