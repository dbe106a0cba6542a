"""Add new classes to a trained model from their names alone (no image of them).

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
   feature grid of a training crop). Only the head moves because no real image anchors this
   run: the trunk is shared with the adversarial head and was trained on real features, and
   training it on generated features alone would drift away from them.

The finetuning is a method of the one training loop (`ClassifierExtension`, no run folder).
`extend_checkpoint` applies all this to checkpoint files (`cagnet extend`), optionally putting
the classes in the order of a split file (`cagnet eval` needs the checkpoint's classes in the
order of the split it evaluates with; rows of the embeddings and the classifier move together,
which changes no prediction); `cagnet predict --add-classes` extends in memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import yaml
from torch import nn

from cagnet.class_embeddings import build_class_embeddings, load_class_embeddings
from cagnet.config import LossConfig, config_to_dict
from cagnet.engine import loop
from cagnet.engine.checkpoint import LoadedModel, load_checkpoint, model_from_checkpoint, \
    save_checkpoint
from cagnet.engine.optim import Optimizers
from cagnet.engine.schedules import iteration_seed
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step
from cagnet.errors import CagnetError, EmbeddingError
from cagnet.utils.io import atomic_write_text

LOGGER = logging.getLogger("cagnet")


@dataclass
class ExtensionSettings:
    """The short classifier finetuning of `cagnet extend` (None = take the checkpoint's
    `train.batch_size` / `train.gen_unseen_rate`)."""

    iterations: int = 300
    lr: float = 1e-3
    batch_size: int | None = None
    unseen_rate: float | None = None
    seed: int = 0


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


def grow_classifier(discriminator: nn.Module, num_new: int) -> None:
    """Give the classification head `num_new` more real-class outputs, in place.

    Rows 0..K-1 are copied, rows K..K+n-1 start as the mean of the old real-class rows (weight
    and bias), and the extra logit (if any) moves from row K to row K + n.
    """
    old: nn.Conv2d = discriminator.classifier
    num_classes = discriminator.num_classes
    extra = int(discriminator.extra_logit)
    new = nn.Conv2d(old.in_channels, num_classes + num_new + extra, 1, bias=True)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        for target, source in ((new.weight, old.weight), (new.bias, old.bias)):
            target[:num_classes] = source[:num_classes]
            target[num_classes:num_classes + num_new] = source[:num_classes].mean(0)
            if extra:
                target[num_classes + num_new] = source[num_classes]
    discriminator.classifier = new
    discriminator.num_classes = num_classes + num_new


def add_unseen_classes(model: nn.Module, rows: torch.Tensor) -> None:
    """Append rows (n, E) to `model.class_embeddings` as unseen classes and grow the
    classifier (see `grow_classifier`)."""
    embeddings = model.class_embeddings
    if rows.dim() != 2 or rows.shape[1] != embeddings.shape[1]:
        raise EmbeddingError(f"new class embeddings have shape {tuple(rows.shape)}, the model's "
                             f"are {embeddings.shape[1]}-d")
    model.class_embeddings = torch.cat([embeddings, rows.to(embeddings)], dim=0)
    grow_classifier(model.discriminator, rows.shape[0])


class ClassifierExtension(loop.Method):
    """Train only `model.discriminator.classifier` on generated features of every class, as
    step-2 iterations draw them; every other parameter keeps its value (and its
    `requires_grad` flag is restored by `finish`)."""

    name = "extend"

    def __init__(self, model: nn.Module, draw: LabelDraw, settings: ExtensionSettings,
                 device: torch.device) -> None:
        self.model, self.draw, self.settings = model, draw, settings
        self.context = StepContext(device)
        self.flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
        model.requires_grad_(False)
        head = model.discriminator.classifier
        head.requires_grad_(True)
        self.optimizers = {"classifier": torch.optim.Adam(head.parameters(), lr=settings.lr)}
        self.cagnet_optimizers = Optimizers(None, self.optimizers["classifier"], None)
        self.loss = dataclasses.replace(LossConfig(), step2_discriminator_cls_fake=1.0,
                                        step2_generator_cls_fake=0.0)
        self.losses: list[float] = []

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        self.model.train()  # dropout in generator and trunk, as in a step-2 iteration
        self.draw.generator.manual_seed(iteration_seed(self.settings.seed, iteration))
        terms = classifier_step(self.model, self.cagnet_optimizers, self.loss, self.draw,
                                self.context)
        self.losses.append(terms["step2_cls_fake"])
        return terms

    def finish(self, run_dir: Path | None) -> None:
        for parameter, flag in self.flags.items():
            parameter.requires_grad_(flag)
        self.model.eval()


def finetune_classifier(model: nn.Module, grid_size: tuple[int, int], batch_size: int,
                        unseen_rate: float, settings: ExtensionSettings, device: torch.device,
                        show_progress: bool = False) -> list[float]:
    """Run `ClassifierExtension` for `settings.iterations`; returns the step-2 classification
    loss of every iteration."""
    method = ClassifierExtension(model, LabelDraw(batch_size, grid_size, unseen_rate,
                                                  torch.Generator()), settings, device)
    try:
        iterations = max(1, settings.iterations)
        loop.run(method, loop.LoopSettings(settings.iterations, settings.seed, iterations,
                                           iterations), None, show_progress=show_progress)
    finally:
        method.finish(None)
    return method.losses


def extend_model(model: nn.Module, rows: torch.Tensor, grid_size: tuple[int, int],
                 batch_size: int, unseen_rate: float, settings: ExtensionSettings,
                 device: torch.device, show_progress: bool = False) -> dict:
    """Add the classes (see the module docstring) and finetune; returns a summary."""
    num_before = model.num_classes
    add_unseen_classes(model, rows.to(device))
    losses = finetune_classifier(model, grid_size, batch_size, unseen_rate, settings, device,
                                 show_progress)
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    summary = {"classes_before": num_before, "classes_after": model.num_classes,
               "grid_size": list(grid_size), "batch_size": batch_size,
               "unseen_rate": unseen_rate, **dataclasses.asdict(settings),
               "loss_first": losses[0] if losses else None,
               "loss_last": sum(tail) / len(tail)}
    LOGGER.info("extended %d -> %d classes; classifier loss %.4g -> %.4g over %d iterations",
                num_before, model.num_classes, summary["loss_first"] or float("nan"),
                summary["loss_last"], settings.iterations)
    return summary


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


def extend_loaded_model(loaded: LoadedModel, names: Sequence[str],
                        word_vectors: Sequence[tuple[str, str]] = (),
                        embeddings_file: str | None = None,
                        settings: ExtensionSettings | None = None,
                        show_progress: bool = False) -> dict:
    """Extend a loaded checkpoint's model in memory (its class list grows too); returns a
    summary with the embedding provenance. The grid is the feature grid of a training crop."""
    settings = settings or ExtensionSettings()
    config, model = loaded.config, loaded.model
    if config.baseline.method != "cagnet":
        raise CagnetError(f"extending a {config.baseline.method} model: new classes are learnt "
                          "from CaGNet's feature generator, so only cagnet checkpoints "
                          "(baseline.method: cagnet) can be extended")
    rows, metadata = new_class_embeddings(names, model.class_embeddings.shape[1],
                                          word_vectors, embeddings_file)
    _check_same_sources(config, metadata)
    grid = tuple(model.feature_size(config.data.crop_size, config.data.crop_size))
    summary = extend_model(
        model, rows, grid, settings.batch_size or config.train.batch_size,
        config.train.gen_unseen_rate if settings.unseen_rate is None else settings.unseen_rate,
        settings, loaded.device, show_progress)
    loaded.class_names = loaded.class_names + list(names)
    loaded.added_classes = loaded.added_classes + list(names)
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
