"""Add classes to a trained CaGNet by name: their embeddings become unseen classes after all
others, each new classifier row starts as the mean of the real ones, and the head alone is
finetuned on generated features as in step 2 (with `--shots`, also on real pixels; with
`--network-iterations`, the whole network first learns from the shots)."""

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml
from torch.utils.data import Dataset

from cagnet.baselines.shots import (ExtensionSettings, PixelPool, extend_with_shots, read_shots,
                                    replay_pool)
from cagnet.class_embeddings import build_class_embeddings, load_class_embeddings, sidecar_path
from cagnet.config import config_to_dict
from cagnet.datasets.build import build_dataset, resolve_path
from cagnet.engine.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint, \
    save_checkpoint
from cagnet.errors import CagnetError, EmbeddingError
from cagnet.utils.io import atomic_write_text

LOGGER = logging.getLogger("cagnet")
WordVectors = Sequence[tuple[str, str]]  # (kind, path) of each word-vector file, in order
__all__ = ["ExtensionSettings", "extend_checkpoint", "extend_loaded_model", "parse_class_list"]


def parse_class_list(text: str, existing: Sequence[str] = ()) -> list[str]:
    """`"zebra, giraffe"` -> ["zebra", "giraffe"]; rejects empty, repeated or existing names."""
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise CagnetError(f"--add-classes {text!r}: expected comma-separated class names, "
                          "none of them empty")
    repeated = sorted({name for name in names if names.count(name) > 1})
    clashing = [name for name in names if name in existing]
    if repeated or clashing:
        raise CagnetError(f"--add-classes {text!r}: names given twice {repeated} or already "
                          f"classes of the model {clashing}")
    return names


def new_class_embeddings(names: Sequence[str], embed_dim: int, word_vectors: WordVectors = (),
                         embeddings_file: str | None = None) -> tuple[torch.Tensor, dict]:
    """Rows (n, E) and metadata for the new names, from `word_vectors` (kind, path) in the model's
    order (VOC fastnvec: fastText then word2vec) or from a `.npy` with one row per name."""
    if bool(word_vectors) == bool(embeddings_file):
        raise CagnetError("give the new classes' embeddings either as --word-vectors (the "
                          "word-vector files the model's classes were embedded with) or as "
                          "--embeddings FILE.npy, not both and not neither")
    if embeddings_file:
        matrix, metadata = load_class_embeddings(embeddings_file, expected_rows=len(names),
                                                 class_names=list(names))
        metadata = dict(metadata, file=str(embeddings_file))
        where = str(embeddings_file)
    else:
        matrix, metadata = build_class_embeddings(list(names), list(word_vectors))
        where = " + ".join(path for _, path in word_vectors)
    if matrix.shape[1] != embed_dim:
        raise EmbeddingError(f"{where} gives {matrix.shape[1]}-d class embeddings, but the model "
                             f"was trained with {embed_dim}-d embeddings: the new rows must "
                             "come from the same word vectors (same files, same order)")
    return torch.as_tensor(matrix, dtype=torch.float32), metadata


def _check_same_sources(config, metadata: dict) -> None:
    """Warn when the new rows' word vectors (sha256) differ from the model's recorded ones."""
    sidecar = sidecar_path(resolve_path(config.embeddings.path, config.data.root))
    try:
        stored = json.loads(sidecar.read_text(encoding="utf-8")).get("sources") or []
    except (OSError, ValueError, AttributeError):
        LOGGER.info("%s not readable: cannot confirm that the new class embeddings come from "
                    "the same word vectors as the model's", sidecar)
        return
    old = [source.get("sha256") for source in stored if isinstance(source, dict)]
    new = [source.get("sha256") for source in metadata.get("sources") or []
           if isinstance(source, dict)]
    if old and new and old != new:
        LOGGER.warning("the new class embeddings come from other word-vector files (sha256 "
                       "%s) than the model's (%s, recorded in %s): rows from different "
                       "vectors live in different spaces even when the dimension matches",
                       [h[:12] for h in new if h], [h[:12] for h in old if h], sidecar)


def _replay(loaded: LoadedModel, settings: ExtensionSettings
            ) -> Callable[[torch.nn.Module], PixelPool | None] | None:
    """Seen-class pixels of some training images (read through the model it is given, after
    any network training); None (warned) if the dataset is unreadable."""
    config = loaded.config
    try:
        dataset = build_dataset(config.data, loaded.split(), settings.seed, "train",
                                eval_warp=config.eval.warp_size)
    except CagnetError as error:
        LOGGER.warning("no replay of the training images (%s): only the shots' pixels of old "
                       "classes anchor them", error)
        return None
    return lambda model: replay_pool(model, dataset, settings.replay_images, settings.seed,
                                     loaded.device)


def _training_images(loaded: LoadedModel) -> Dataset:
    """The model's training images, augmented as in its step 1 (network training with shots)."""
    config = loaded.config
    if not Path(config.data.root).is_dir():
        raise CagnetError(f"--network-iterations: the network also trains on the model's "
                          f"training images, but its dataset folder (data.root) "
                          f"{config.data.root} is not there: give it with --data-root DIR")
    try:
        return build_dataset(config.data, loaded.split(), config.train.seed, "train")
    except CagnetError as error:
        raise CagnetError(f"--network-iterations: the network also trains on the model's "
                          f"training images (the checkpoint's data.root), which cannot be "
                          f"read: {error}") from None


def extend_loaded_model(loaded: LoadedModel, names: Sequence[str], word_vectors: WordVectors = (),
                        embeddings_file: str | None = None,
                        settings: ExtensionSettings | None = None,
                        show_progress: bool = False) -> dict:
    """Extend a loaded model and its class list in memory; returns the summary."""
    settings = settings or ExtensionSettings()
    config, model = loaded.config, loaded.model
    if config.baseline.method != "cagnet":
        raise CagnetError(f"extending a {config.baseline.method} model: new classes are learnt "
                          "from CaGNet's feature generator, so only cagnet checkpoints "
                          "(baseline.method: cagnet) can be extended")
    rows, metadata = new_class_embeddings(names, model.class_embeddings.shape[1],
                                          word_vectors, embeddings_file)
    _check_same_sources(config, metadata)
    shots = read_shots(settings.shots, loaded.class_names + list(names)) if settings.shots \
        else []
    replay = _replay(loaded, settings) if shots and settings.replay_images else None
    training = _training_images(loaded) if shots and settings.network_iterations else None
    summary = extend_with_shots(loaded, names, rows, settings, shots, replay, training,
                                show_progress)
    sources = [{key: source.get(key) for key in ("kind", "path", "sha256", "dim")}
               for source in metadata.get("sources") or [] if isinstance(source, dict)]
    embedding = {"file": embeddings_file, "sources": sources, "rule": metadata.get("rule")}
    return {**summary, "added_classes": list(names), "embedding": embedding}


def read_class_order(path: str | Path) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of a split file, in file order (names, not ids)."""
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CagnetError(f"--class-order {path}: unreadable split file ({error})") from None
    lists = [content.get(key) if isinstance(content, dict) else None for key in ("seen", "unseen")]
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names)
               for names in lists):
        raise CagnetError(f"--class-order {path}: expected 'seen' and 'unseen' lists of names")
    return lists[0], lists[1]


def reorder_classes(model: torch.nn.Module, class_names: Sequence[str], num_seen: int,
                    seen: Sequence[str], unseen: Sequence[str]) -> list[str]:
    """Permute the model's classes (embedding and classifier rows; the extra logit stays last)
    into `seen + unseen`, which must be its seen and unseen classes; returns the new names."""
    order = list(seen) + list(unseen)
    if set(seen) != set(class_names[:num_seen]) or sorted(order) != sorted(class_names):
        raise CagnetError(f"--class-order: the split lists seen {list(seen)} and unseen "
                          f"{list(unseen)}, but the extended model has seen "
                          f"{list(class_names[:num_seen])} and unseen "
                          f"{list(class_names[num_seen:])}: expected the same classes")
    index = torch.tensor([list(class_names).index(name) for name in order],
                         device=model.class_embeddings.device)
    model.class_embeddings = model.class_embeddings[index].clone()
    head = model.discriminator.classifier
    with torch.no_grad():
        head.weight[:len(order)] = head.weight[:len(order)][index].clone()
        head.bias[:len(order)] = head.bias[:len(order)][index].clone()
    return order


def extend_checkpoint(checkpoint: str, out: str, names_text: str, word_vectors: WordVectors = (),
                      embeddings_file: str | None = None, settings: ExtensionSettings | None = None,
                      device: torch.device | None = None, class_order: str | None = None,
                      data_root: str | None = None) -> dict:
    """Write `out` (old + new classes) and `<out stem>.split.yaml` (added classes last unless
    `class_order` names a split file) as its stored `data.split` (the previous one goes to
    `extra.extension.base_split`), so `cagnet eval` works unchanged. `data_root` replaces the
    checkpoint's `data.root` (a moved dataset). Returns the summary."""
    state = load_checkpoint(checkpoint)
    loaded = model_from_checkpoint(state, checkpoint)
    if data_root is not None:
        if not Path(data_root).is_dir():
            raise CagnetError(f"--data-root: folder not found: {data_root}")
        loaded.config.data.root = str(Path(data_root).resolve())
    loaded.model.to(device or torch.device("cpu"))
    names = parse_class_list(names_text, state["class_names"])
    extra = state.get("extra") or {}
    summary = extend_loaded_model(loaded, names, word_vectors, embeddings_file, settings,
                                  show_progress=True)
    if class_order:
        loaded.class_names = reorder_classes(loaded.model, loaded.class_names,
                                             loaded.num_seen, *read_class_order(class_order))
    out = Path(out)
    split_path = out.with_name(out.stem + ".split.yaml").resolve()
    seen, unseen = loaded.class_names[:loaded.num_seen], loaded.class_names[loaded.num_seen:]
    atomic_write_text(split_path, f"# written by cagnet extend: the class order of {out.name}\n"
                      f"seen: {json.dumps(seen)}\nunseen: {json.dumps(unseen)}\n")
    config = loaded.config
    summary.update(base_checkpoint=str(checkpoint),
                   base_split=(extra.get("extension") or {}).get("base_split", config.data.split),
                   added_classes=loaded.added_classes, split_file=str(split_path),
                   added_now=list(names), class_order=class_order)
    config.data.split = str(split_path)
    save_checkpoint(out, model=loaded.model, iteration=state["iteration"],
                    config=config_to_dict(config), class_names=loaded.class_names,
                    num_seen=loaded.num_seen,
                    extra={"extension": summary, "base_extra_scores": extra.get("scores", {})})
    return summary
