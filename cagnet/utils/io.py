"""Atomic file writes (temporary file in the same folder, fsync, `os.replace`): a crash or a
full disk never leaves a half-written output behind."""

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, BinaryIO

from cagnet.errors import CheckpointError


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                         dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return destination


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return the path."""
    return _atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON (NaN written as null) atomically and return the path."""
    return atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """`torch.save(obj)` to `path` atomically and return the path."""
    import torch
    return _atomic_write(path, lambda stream: torch.save(obj, stream))


def load_torch_file(path: Path, missing: str, describe: Callable[[Exception], str]) -> Any:
    """`torch.load` onto the CPU, weights only; CheckpointError(`missing` / `describe(error)`)."""
    import torch
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt, truncated or unsafe files
        raise CheckpointError(describe(error)) from None


def _nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: classes with an empty union are written as null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {key: _nan_to_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(value) for value in obj]
    return obj


OUTPUT_DIR_MARK = "<output-dir>"


def relocatable(value: Any, root: str) -> Any:
    """JSON-like `value` with every occurrence of the absolute folder path `root` in its strings
    written as `<output-dir>`: a cache signature that survives moving or copying the folder."""
    if isinstance(value, dict):
        return {key: relocatable(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [relocatable(item, root) for item in value]
    if isinstance(value, str):
        return value.replace(root, OUTPUT_DIR_MARK)
    return value
