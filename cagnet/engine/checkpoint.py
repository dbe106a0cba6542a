"""Checkpoints: one self-describing dict, written atomically, loaded safely.

A checkpoint holds the model's state dict (saved from the unwrapped model), the optimisers,
the iteration, the resolved config, the class order and the run's counters. Schedules and
random draws are pure functions of the iteration, so nothing else is needed for an exact
resume. Files are loaded with `torch.load(..., weights_only=True)`: a checkpoint from an
untrusted source cannot execute code.

`model_from_checkpoint` is the one way from a checkpoint to a model (evaluation, prediction,
calibration, extension, pseudo-labelling); `load_weights` fills a model built from a recipe
(finetuning from a step-1 checkpoint, resuming).

A run keeps `last.pt` and `previous.pt` (the one before it, a hard link kept before `last.pt` is
replaced), so a truncated or corrupt `last.pt` still leaves a checkpoint to resume from.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from cagnet.config import Config, config_from_dict, load_config
from cagnet.datasets.build import build_split
from cagnet.datasets.splits import ClassSplit
from cagnet.errors import CheckpointError, ConfigError
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


def check_same_classes(state: dict, class_names: Sequence[str], path: str | Path) -> None:
    """A checkpoint's classes (seen then unseen) must be the config's, in the same order."""
    if state.get("class_names") != list(class_names):
        raise CheckpointError(f"{path} was trained for classes {state.get('class_names')}, but "
                              f"this config has {list(class_names)} (seen then unseen)")


def _differing_settings(stored: dict, current: dict, prefix: str = "model.") -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [f"{prefix}{key}: checkpoint {stored.get(key)!r}, config {current.get(key)!r}"
            for key in keys if stored.get(key) != current.get(key)]


def load_weights(model: nn.Module, state: dict, path: str | Path,
                 model_settings: dict | None = None) -> None:
    """`model.load_state_dict(state["model"])` with an error naming the file and, when the
    config's `model` section is given, the settings that differ from the checkpoint's (a
    mismatch of architecture or class-embedding size is otherwise thousands of key names)."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        stored = (state.get("config") or {}).get("model") or {}
        differing = _differing_settings(stored, model_settings) if model_settings else []
        if differing:
            detail = "differing settings: " + "; ".join(differing)
        else:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = " ".join(lines[:2])[:400] if lines else repr(error)
        raise CheckpointError(f"{path} does not match the model built from this config "
                              f"(architecture or class-embedding size): {detail}") from None


def load_backbone_init(model: nn.Module, path: str | Path) -> list[str]:
    """Load an init file (`cagnet pretrain` or `import-checkpoint --init-only` output) into
    `model.backbone`. Every key in the file must exist in the backbone with the same shape;
    backbone keys the file lacks (an image-level pretrained trunk has no ASPP) keep their
    Kaiming init. Returns those keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.init: init checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        raise CheckpointError(f"init checkpoint {path} is corrupt or unsafe: {error}") from None
    weights = state.get("backbone") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'backbone' state dict "
                              "(the output of `cagnet pretrain`)")
    target = model.backbone.state_dict()
    problems = [f"{key} (not in the backbone)" for key in weights if key not in target]
    problems += [f"{key} (shape {tuple(value.shape)} vs {tuple(target[key].shape)})"
                 for key, value in weights.items()
                 if key in target and value.shape != target[key].shape]
    if problems:
        raise CheckpointError(f"{path}: init weights do not match the configured backbone: "
                              + "; ".join(problems[:10]))
    model.backbone.load_state_dict(weights, strict=False)
    return sorted(set(target) - set(weights))


@dataclass
class LoadedModel:
    """A checkpoint's model (CPU, eval mode) with the config and classes it runs with.

    `tags[k]` is "seen" for k < num_seen, "added" for classes added by `cagnet extend` (they
    are unseen classes too) and "unseen" otherwise."""

    model: nn.Module
    config: Config
    class_names: list[str]
    num_seen: int
    state: dict
    source: str
    added_classes: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.model.class_embeddings.device

    @property
    def tags(self) -> list[str]:
        added = set(self.added_classes)
        return ["seen" if index < self.num_seen else "added" if name in added else "unseen"
                for index, name in enumerate(self.class_names)]

    def split(self) -> ClassSplit:
        """The config's class split (what evaluation reads the test labels with), checked to
        hold the checkpoint's classes in the checkpoint's order."""
        split = build_split(self.config)
        check_same_classes(self.state, split.model_class_names, self.source)
        return split


def model_from_checkpoint(state: dict, source: str | Path = "checkpoint",
                          config: Config | None = None) -> LoadedModel:
    """THE way from a checkpoint to a model: the architecture comes from the checkpoint's own
    config (`model` and `baseline.method`), the classes and their embeddings from its class
    list and `class_embeddings` buffer, so no dataset, split or embedding file is read.
    `config` (the stored one by default) only changes what the run does with the model."""
    from cagnet.models.build import build_model

    stored = config_from_dict(state["config"])
    embeddings = state["model"].get("class_embeddings")
    if "feature_dim" not in state["config"].get("model", {}) and embeddings is not None:
        stored.model.feature_dim = int(embeddings.shape[1])  # older checkpoints: E wide
    config = config or stored
    config.model.feature_dim = stored.model.feature_dim
    class_names = list(state.get("class_names") or [])
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise CheckpointError(f"{source}: the model has no (K, E) 'class_embeddings' buffer")
    if embeddings.shape[0] != len(class_names):
        raise CheckpointError(f"{source}: {len(class_names)} class names but "
                              f"{embeddings.shape[0]} class-embedding rows")
    model = build_model(stored.baseline.method, stored.model, embeddings, int(state["num_seen"]),
                        stored.data.mean_bgr, load_pretrained=False)
    load_weights(model, state, source)
    extension = (state.get("extra") or {}).get("extension") or {}
    return LoadedModel(model.eval(), config, class_names, int(state["num_seen"]), state,
                       str(source), list(extension.get("added_classes", [])))


def load_model(path: str | Path, config_path: str | Path | None = None,
               overrides: Sequence[str] = ()) -> LoadedModel:
    """Load a checkpoint of any method. `config_path` / `overrides` may change the data and
    evaluation settings (another dataset root, `eval.protocol=original`, ...); the architecture
    always comes from the checkpoint, so overriding a `model.` or `baseline.` key is refused."""
    frozen = [text for text in overrides if text.split("=")[0].strip().startswith(
        ("model.", "baseline."))]
    if frozen:
        raise ConfigError(f"--set {frozen[0]}: the architecture (model.*, baseline.*) comes "
                          f"from the checkpoint {path} and cannot be overridden")
    state = load_checkpoint(path)
    config = load_config(config_path, overrides) if config_path else \
        config_from_dict(state["config"], overrides)
    stored = config_from_dict(state["config"])
    config.model, config.baseline = stored.model, stored.baseline
    return model_from_checkpoint(state, path, config)


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
