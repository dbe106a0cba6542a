"""Add new classes to a trained model from their names, and optionally a few labelled images.

CaGNet's classifier learns unseen classes from *generated* features: the generator maps a
class embedding and a latent code to a pixel feature. A class that did not exist at training
time is therefore one more unseen class, as soon as it has an embedding in the same space:

1. embed the new names with the same rule as the existing classes (`cagnet.class_embeddings`:
   the same word-vector files, in the same order) or take the rows from a `.npy` file; the
   dimension must equal the model's embedding dimension E;
2. append the rows to the model's `class_embeddings` buffer, after every existing class, as
   unseen classes (the class order stays seen, unseen, added);
3. grow the classifier head by one output row per new class: existing rows are copied
   unchanged, the extra never-trained logit (if the model has one) stays last, and each new
   row starts as the mean of the existing real-class rows (a logit of typical magnitude that
   neither dominates nor is ignored at the start);
4. finetune the classifier head alone (the discriminator trunk, the adversarial head, the
   generator and the backbone stay frozen) on generated features of ALL classes, exactly as a
   step-2 iteration draws them (`cagnet.engine.steps.classifier_step`: per-pixel labels with
   weight 1 per seen class and 1 + `gen_unseen_rate` per unseen class, latent N(0, I), on the
   feature grid of a training crop). Only the head moves: the trunk is shared with the
   adversarial head and was trained on real features, which a few shots cannot stand for.

With `--shots DIR` (K labelled images, layout in `cagnet.baselines.shots`) the head also
learns from the real shot pixels and from the seen classes' real pixels, replayed from a
sample of the checkpoint's training images when its dataset is reachable; the generator can
first adapt to the shots. Without shots, nothing changes.

The finetuning is a method of the one training loop (`ClassifierFinetune`, no run folder).
`extend_checkpoint` applies all this to checkpoint files (`cagnet extend`), optionally putting
the classes in the order of a split file (`cagnet eval` needs the checkpoint's classes in the
order of the split it evaluates with; rows of the embeddings and the classifier move together,
which changes no prediction); `cagnet predict --add-classes` extends in memory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
import yaml

from cagnet.baselines.shots import (ExtensionSettings, PixelPool, extend_with_shots, read_shots,
                                    replay_pool)
from cagnet.class_embeddings import build_class_embeddings, load_class_embeddings
from cagnet.config import config_to_dict
from cagnet.datasets.build import build_dataset
from cagnet.engine.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint, \
    save_checkpoint
from cagnet.errors import CagnetError, EmbeddingError
from cagnet.utils.io import atomic_write_text

LOGGER = logging.getLogger("cagnet")
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


def new_class_embeddings(names: Sequence[str], embed_dim: int,
                         word_vectors: Sequence[tuple[str, str]] = (),
                         embeddings_file: str | None = None) -> tuple[torch.Tensor, dict]:
    """Rows (n, E) for the new class names, from word vectors or from a `.npy` file.

    Args:
        names: the n new class names.
        embed_dim: E, the model's class-embedding dimension.
        word_vectors: (kind, path) sources in the order the model's embeddings were built
            (the shapes benchmark: [("word2vec", "word_vectors.txt")]; VOC fastnvec: fastText
            then word2vec).
        embeddings_file: alternatively, a `.npy` with one row per new name (in order).
    """
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
    """Warn when the new rows' word-vector files (by sha256) differ from those recorded in the
    sidecar of the embedding file the model was trained with (when it can still be found)."""
    from cagnet.class_embeddings import sidecar_path
    from cagnet.datasets.build import resolve_path

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


def _replay(loaded: LoadedModel, settings: ExtensionSettings) -> PixelPool | None:
    """Seen-class pixels of a sample of the checkpoint's training images, or None (with a
    warning) when its dataset cannot be read."""
    config = loaded.config
    try:
        dataset = build_dataset(config.data, loaded.split(), settings.seed, "train",
                                eval_warp=config.eval.warp_size)
    except CagnetError as error:
        LOGGER.warning("no replay of the training images (%s): only the shots' pixels of old "
                       "classes anchor them", error)
        return None
    return replay_pool(loaded.model, dataset, settings.replay_images, settings.seed,
                       loaded.device)


def extend_loaded_model(loaded: LoadedModel, names: Sequence[str],
                        word_vectors: Sequence[tuple[str, str]] = (),
                        embeddings_file: str | None = None,
                        settings: ExtensionSettings | None = None,
                        show_progress: bool = False) -> dict:
    """Extend a loaded checkpoint's model in memory (its class list grows too); returns a
    summary with the embedding provenance. With `settings.shots`, the seen classes' pixels of
    `settings.replay_images` training images are replayed when the dataset is reachable."""
    settings = settings or ExtensionSettings()
    config, model = loaded.config, loaded.model
    if config.baseline.method != "cagnet":
        raise CagnetError(f"extending a {config.baseline.method} model: new classes are learnt "
                          "from CaGNet's feature generator, so only cagnet checkpoints "
                          "(baseline.method: cagnet) can be extended")
    rows, metadata = new_class_embeddings(names, model.class_embeddings.shape[1],
                                          word_vectors, embeddings_file)
    _check_same_sources(config, metadata)
    shots = read_shots(settings.shots, loaded.class_names + list(names), config.data.mean_bgr,
                       config.eval.warp_size) if settings.shots else []
    replay = _replay(loaded, settings) if shots and settings.replay_images else None
    summary = extend_with_shots(loaded, names, rows, settings, shots, replay, show_progress)
    sources = [{key: source.get(key) for key in ("kind", "path", "sha256", "dim")}
               for source in metadata.get("sources") or [] if isinstance(source, dict)]
    return {**summary, "added_classes": list(names),
            "embedding": {"file": embeddings_file, "sources": sources,
                          "rule": metadata.get("rule")}}


def read_class_order(path: str | Path) -> tuple[list[str], list[str]]:
    """(seen, unseen) class names of a split file, in file order (names, not ids)."""
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CagnetError(f"--class-order {path}: unreadable split file ({error})") from None
    lists = [content.get(key) if isinstance(content, dict) else None
             for key in ("seen", "unseen")]
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names)
               for names in lists):
        raise CagnetError(f"--class-order {path}: expected 'seen' and 'unseen' lists of class "
                          "names")
    return lists[0], lists[1]


def reorder_classes(model: torch.nn.Module, class_names: Sequence[str], num_seen: int,
                    seen: Sequence[str], unseen: Sequence[str]) -> list[str]:
    """Permute the model's classes into `seen + unseen` (in place); returns the new names.

    The seen classes must stay the model's seen classes and unseen its unseen ones; class
    embedding rows and classifier rows move together (the extra logit stays last).
    """
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


def extend_checkpoint(checkpoint: str, out: str, names_text: str,
                      word_vectors: Sequence[tuple[str, str]] = (),
                      embeddings_file: str | None = None,
                      settings: ExtensionSettings | None = None,
                      device: torch.device | None = None,
                      class_order: str | None = None) -> dict:
    """Write `out` (a checkpoint over the old + new classes) and `<out stem>.split.yaml` (its
    class order: seen, then unseen; added classes last unless `class_order` names a split
    file to follow). The stored config's `data.split` points to that file, so `cagnet eval`
    works unchanged on a dataset whose class-name file names the new classes; the previous
    split is kept in `extra.extension.base_split`. Returns the summary."""
    state = load_checkpoint(checkpoint)
    loaded = model_from_checkpoint(state, checkpoint)
    loaded.model.to(device or torch.device("cpu"))
    names = parse_class_list(names_text, state["class_names"])
    previous = (state.get("extra") or {}).get("extension") or {}
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
                   base_split=previous.get("base_split", config.data.split),
                   added_classes=loaded.added_classes, split_file=str(split_path),
                   added_now=list(names), class_order=class_order)
    config.data.split = str(split_path)
    save_checkpoint(out, model=loaded.model, iteration=state["iteration"],
                    config=config_to_dict(config), class_names=loaded.class_names,
                    num_seen=loaded.num_seen,
                    extra={"extension": summary, "base_extra_scores":
                           (state.get("extra") or {}).get("scores", {})})
    return summary
