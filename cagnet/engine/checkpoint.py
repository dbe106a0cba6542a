"""Checkpoints: one self-describing dict, written atomically, loaded with `weights_only=True`."""

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
from cagnet.utils.io import atomic_torch_save, load_torch_file

FORMAT = "cagnet-checkpoint-v1"
LOGGER = logging.getLogger("cagnet")


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, iteration: int, config: dict,
                    class_names: list[str], num_seen: int, optimizers: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically."""
    state = {"format": FORMAT, "iteration": int(iteration), "config": config,
             "class_names": list(class_names), "num_seen": int(num_seen),
             "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
             "optimizers": optimizers or {}, "extra": extra or {}}
    try:
        return atomic_torch_save(path, state)
    except OSError as error:  # a full disk, a vanished folder, a lost network mount
        raise CheckpointError(f"could not write checkpoint {path}: {error}; the checkpoints "
                              f"already in {Path(path).parent} are intact") from None


def keep_previous(path: str | Path) -> None:
    """Keep the current `path` (`last.pt`) as `previous.pt`: a hard link, else a copy; atomic."""
    path = Path(path)
    if not path.is_file():
        return
    temporary = path.with_name(".previous.pt.link.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(path, temporary)
    except OSError:
        shutil.copyfile(path, temporary)
    os.replace(temporary, path.with_name("previous.pt"))


def check_same_classes(state: dict, class_names: Sequence[str], path: str | Path) -> None:
    """A checkpoint's classes (seen then unseen) must be the config's, in the same order."""
    if state.get("class_names") != list(class_names):
        raise CheckpointError(f"{path} was trained for classes {state.get('class_names')}, but "
                              f"this config has {list(class_names)} (seen then unseen)")


def load_weights(model: nn.Module, state: dict, path: str | Path,
                 model_settings: dict | None = None) -> None:
    """Load `state["model"]`; errors name the file and the settings that differ."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        stored, current = (state.get("config") or {}).get("model") or {}, model_settings or {}
        differing = [f"model.{key}: checkpoint {stored.get(key)!r}, config {current.get(key)!r}"
                     for key in sorted(set(stored) | set(current))
                     if stored.get(key) != current.get(key)] if model_settings else []
        if differing:
            detail = "differing settings: " + "; ".join(differing)
        else:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = " ".join(lines[:2])[:400] if lines else repr(error)
        raise CheckpointError(f"{path} does not match the model built from this config "
                              f"(architecture or class-embedding size): {detail}") from None


def load_backbone_init(model: nn.Module, path: str | Path) -> list[str]:
    """Load an init file into `model.backbone`; returns the backbone keys it lacks."""
    path = Path(path)
    state = load_torch_file(path, f"model.init: init checkpoint not found: {path}",
                            lambda error: f"init checkpoint {path} is corrupt or unsafe: {error}")
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
    """A checkpoint's model (CPU, eval mode) with its config and classes."""

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
        """The config's class split, checked to hold the checkpoint's classes in its order."""
        split = build_split(self.config)
        check_same_classes(self.state, split.model_class_names, self.source)
        return split


def model_from_checkpoint(state: dict, source: str | Path = "checkpoint",
                          config: Config | None = None) -> LoadedModel:
    """THE way from a checkpoint to a model, built from the checkpoint alone."""
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
    """Load a checkpoint; `config_path` / `overrides` may not change the architecture."""
    state = load_checkpoint(path)
    architecture = [text for text in overrides
                    if text.split("=")[0].strip().startswith(("model.", "baseline."))]
    for text in architecture:
        key, _, value = (part.strip() for part in text.partition("="))
        stored_trunk = state["config"]["model"].get("trunk", "")
        if key != "model.trunk" or not _same_python_factory(stored_trunk, value):
            raise ConfigError(f"--set {text}: the architecture (model.*, baseline.*) comes from "
                              f"the checkpoint {path} and cannot be overridden (only a python: "
                              f"trunk's file may move: --set model.trunk=python:NEW_FILE.py:"
                              f"<the same callable>)")
        # the same factory moved elsewhere: the stored weights still have to fit it
        state = {**state, "config": {**state["config"],
                                     "model": {**state["config"]["model"], "trunk": value}}}
    overrides = [text for text in overrides if text not in architecture]
    config = load_config(config_path, overrides) if config_path else \
        config_from_dict(state["config"], overrides)
    stored = config_from_dict(state["config"])
    config.model, config.baseline = stored.model, stored.baseline
    return model_from_checkpoint(state, path, config)


def _same_python_factory(stored: str, given: str) -> bool:
    """Whether two `python:<file or module>:<callable>` trunks name the same callable."""
    return (stored.startswith("python:") and given.startswith("python:")
            and stored.rpartition(":")[2] == given.rpartition(":")[2])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a `save_checkpoint` file onto the CPU; errors name a missing or bad file."""
    path = Path(path)
    state = load_torch_file(path, f"checkpoint not found: {path}",
                            lambda error: _load_error_message(path, error))
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


def newest_valid_checkpoint(run_dir: str | Path, usable: Callable[[dict], bool] | None = None
                            ) -> tuple[Path, dict] | None:
    """The newest loadable checkpoint of `run_dir` passing `usable`, or None (corrupt: renamed)."""
    folder = Path(run_dir) / "checkpoints"  # resume points, newest first (not best.pt)
    named = [folder / name for name in ("last.pt", "previous.pt") if (folder / name).is_file()]
    numbered = sorted(folder.glob("iter_*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    errors = []
    for path in named + numbered:
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
