"""Checkpoints: one self-describing dict, written atomically, loaded safely.

A checkpoint holds the model's state dict (saved from the unwrapped model), the optimisers,
the iteration, the resolved config, the class order and the run's counters. Schedules and
random draws are pure functions of the iteration, so nothing else is needed for an exact
resume. Files are loaded with `torch.load(..., weights_only=True)`: a checkpoint from an
untrusted source cannot execute code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from cagnet.errors import CheckpointError
from cagnet.utils.io import atomic_torch_save

FORMAT = "cagnet-checkpoint-v1"


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, iteration: int, config: dict,
                    class_names: list[str], num_seen: int, optimizers: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename)."""
    state = {
        "format": FORMAT,
        "iteration": int(iteration),
        "config": config,
        "class_names": list(class_names),
        "num_seen": int(num_seen),
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "optimizers": optimizers or {},
        "extra": extra or {},
    }
    return atomic_torch_save(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` onto the CPU, with errors naming the file
    for a missing, truncated, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError,
            OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise CheckpointError(f"checkpoint {path} is truncated, corrupt or not a safe "
                              f"cagnet checkpoint: {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cagnet checkpoint (expected format {FORMAT!r}); "
                              "original CaGNet releases go through `cagnet import-checkpoint`")
    return state


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest iteration first (`iter_*.pt`, then `last.pt`)."""
    folder = Path(run_dir) / "checkpoints"
    candidates = sorted(folder.glob("iter_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    last = folder / "last.pt"
    return ([last] if last.is_file() else []) + candidates


def newest_valid_checkpoint(run_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint of `run_dir` that loads; raises if every candidate is corrupt."""
    errors = []
    for path in checkpoint_paths(run_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            errors.append(str(error))
    if errors:
        raise CheckpointError("no valid checkpoint to resume from:\n  " + "\n  ".join(errors))
    return None
