"""Load a pickled numpy array (the original releases' word vectors) without running arbitrary
code: only the numpy globals of `_ALLOWED_GLOBALS` are handed out (checked on the released files
and numpy 1.x / 2.x pickles, protocols 0-5); any other is refused before it is imported."""

import codecs
import importlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cagnet.errors import EmbeddingError

__all__ = ["load_numpy_pickle"]


def _numpy_core_attribute(submodule: str, name: str) -> Callable[[], Any]:
    """A resolver for `numpy._core.<submodule>.<name>` that also works on numpy 1.x."""

    def resolve() -> Any:
        for package in ("numpy._core", "numpy.core"):
            try:
                module = importlib.import_module(f"{package}.{submodule}")
            except ImportError:
                continue
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"numpy has no {submodule}.{name}")

    return resolve


_RECONSTRUCT = _numpy_core_attribute("multiarray", "_reconstruct")
_FROMBUFFER = _numpy_core_attribute("numeric", "_frombuffer")

# (module, name) as written in the pickle -> how to obtain the object. numpy 1.x spells the module
# `numpy.core`, 2.x `numpy._core`; `_frombuffer` is protocol 5; protocols 0-2 written by Python 3
# store the array bytes as `_codecs.encode(text, "latin1")` (a pure function).
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _NumpyArrayUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in `_ALLOWED_GLOBALS`."""

    def __init__(self, stream: io.BufferedIOBase, source: Path) -> None:
        # latin1 lets numpy read the raw array bytes of pickles written by Python 2.
        super().__init__(stream, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise EmbeddingError(
                f"{self.source}: refusing to unpickle the global '{module}.{name}'; only a "
                f"pickled numpy array is accepted (allowed globals: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))})")
        return resolve()


def load_numpy_pickle(path: str | os.PathLike) -> np.ndarray:
    """The numeric ndarray pickled in `path` (any protocol), e.g. `(num_ids, 300)` float64 for
    the released word-vector files. EmbeddingError (naming the file) when the file is missing,
    unreadable, not a pickle, names another global or holds anything else."""
    source = Path(path)
    if not source.is_file():
        raise EmbeddingError(f"{source}: pickle file not found")
    try:
        data = source.read_bytes()
    except OSError as error:
        raise EmbeddingError(f"{source}: cannot read pickle file: {error}") from error
    try:
        array = _NumpyArrayUnpickler(io.BytesIO(data), source).load()
    except EmbeddingError:
        raise
    except Exception as error:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        raise EmbeddingError(f"{source}: not a valid pickled numpy array "
                             f"({type(error).__name__}: {error})") from error
    if not isinstance(array, np.ndarray):
        raise EmbeddingError(f"{source}: expected a pickled numpy ndarray, found "
                             f"{type(array).__name__}")
    if array.dtype.hasobject:
        raise EmbeddingError(f"{source}: expected a numeric array, found dtype {array.dtype}")
    return array
