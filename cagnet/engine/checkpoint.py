"""Checkpoints: one self-describing dict, written atomically, loaded safely.

A checkpoint holds the model's state dict (saved from the unwrapped model), the optimisers,
the iteration, the resolved config, the class order and the run's counters. Schedules and
random draws are pure functions of the iteration, so nothing else is needed for an exact
resume. Files are loaded with `torch.load(..., weights_only=True)`: a checkpoint from an
untrusted source cannot execute code.

A run keeps `last.pt` and `previous.pt` (the one before it, a hard link kept before `last.pt` is
replaced), so a truncated or corrupt `last.pt` still leaves a checkpoint to resume from.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from cagnet.errors import CheckpointError
from cagnet.utils.io import atomic_torch_save

FORMAT = "cagnet-checkpoint-v1"
LOGGER = logging.getLogger("cagnet")


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
    try:
        return atomic_torch_save(path, state)
    except OSError as error:  # a full disk, a vanished folder, a lost network mount
        raise CheckpointError(f"could not write checkpoint {path}: {error}; the checkpoints "
                              f"already in {Path(path).parent} are intact") from None


def keep_previous(path: str | Path) -> None:
    """Before `path` (e.g. `last.pt`) is replaced, keep its current version as `previous.pt`
    beside it: a hard link where the filesystem allows it (no copy), else a copy. Both steps
    are atomic, so a crash at any point leaves at least one complete checkpoint."""
    path = Path(path)
    if not path.is_file():
        return
    previous = path.with_name("previous.pt")
    temporary = path.with_name(".previous.pt.link.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:
        shutil.copyfile(path, temporary)
    os.replace(temporary, previous)


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """`model.load_state_dict(state["model"])` with an error naming the file when the
    checkpoint was trained with another architecture or embedding size."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[:4]) if lines else repr(error)
        raise CheckpointError(f"{path} does not match the model built from this config "
                              f"(different architecture or class-embedding size): "
                              f"{detail}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` onto the CPU, with errors naming the file
    for a missing, truncated, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(_load_error_message(path, error)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cagnet checkpoint (expected format {FORMAT!r}); "
                              "original CaGNet releases go through `cagnet import-checkpoint`")
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("iteration"), int):
        raise CheckpointError(f"{path} is incomplete: expected a 'model' state dict and an "
                              "integer 'iteration'")
    return state


def _load_error_message(path: Path, error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = [line for line in lines if "GLOBAL" in line or "Unsupported global" in line]
    if refused:  # weights_only=True met a pickled Python object
        return (f"refusing to load {path}: it holds Python objects other than tensors and plain "
                "data, which could run code when unpickled (loaded with weights_only=True); "
                f"{refused[0]}")
    unpickler = [line for line in lines if line.startswith("Unsupported")]
    detail = (unpickler or lines or [type(error).__name__])[0]
    if "Weights only load failed" in detail:
        detail = "not a torch file"
    return (f"checkpoint {path} is truncated, corrupt or not a checkpoint: "
            f"{detail.split('. ')[0]}")


def checkpoint_paths(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run to resume from, newest first: `last.pt`, `previous.pt`, then any
    `iter_*.pt` by modification time (`best.pt` is a model choice, not a resume point)."""
    folder = Path(run_dir) / "checkpoints"
    named = [folder / name for name in ("last.pt", "previous.pt") if (folder / name).is_file()]
    numbered = sorted(folder.glob("iter_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    return named + numbered


def newest_valid_checkpoint(run_dir: str | Path, usable: Callable[[dict], bool] | None = None
                            ) -> tuple[Path, dict] | None:
    """The newest checkpoint of `run_dir` that loads (and passes `usable`, when given).

    A corrupt newer file is renamed to `<name>.corrupt` (so that `previous.pt` is never rotated
    from it) with a warning naming it. Returns None when the run has no checkpoint; raises
    CheckpointError naming every file when none is valid.
    """
    errors = []
    for path in checkpoint_paths(run_dir):
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            errors.append(str(error))
            quarantine = path.with_name(path.name + ".corrupt")
            os.replace(path, quarantine)
            LOGGER.warning("%s; moved aside to %s, trying an older checkpoint", error, quarantine)
            continue
        if usable is not None and not usable(state):
            errors.append(f"{path} (iteration {state['iteration']}) was written during a "
                          "non-finite streak")
            continue
        if errors:
            LOGGER.warning("resuming from the older checkpoint %s (iteration %d)", path,
                           state["iteration"])
        return path, state
    if errors:
        raise CheckpointError("no valid checkpoint to resume from: " + "; ".join(errors))
    return None
