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

`cagnet.inference.extend_checkpoint` applies this to checkpoint files (`cagnet extend`); `cagnet predict
--add-classes` applies it in memory.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from cagnet.config import LossConfig
from cagnet.errors import CagnetError, EmbeddingError

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
    from cagnet.class_embeddings import build_class_embeddings, load_class_embeddings

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


def finetune_classifier(model: nn.Module, grid_size: tuple[int, int], batch_size: int,
                        unseen_rate: float, settings: ExtensionSettings,
                        device: torch.device) -> list[float]:
    """Train only `model.discriminator.classifier` on generated features of every class.

    Returns the step-2 classification loss of every iteration. Every other parameter keeps
    its value (and its `requires_grad` flag is restored afterwards).
    """
    from cagnet.engine.optim import Optimizers
    from cagnet.engine.schedules import iteration_seed
    from cagnet.engine.steps import classifier_step
    from cagnet.utils.runtime import autocast_factory

    flags = {parameter: parameter.requires_grad for parameter in model.parameters()}
    model.requires_grad_(False)
    head = model.discriminator.classifier
    head.requires_grad_(True)
    optimizers = Optimizers(
        backbone=None,
        discriminator=torch.optim.Adam(head.parameters(), lr=settings.lr),
        # never stepped: the step-2 generator coefficient below is 0
        generator=torch.optim.SGD(model.generator.parameters(), lr=0.0))
    loss = dataclasses.replace(LossConfig(), step2_discriminator_cls_fake=1.0,
                               step2_generator_cls_fake=0.0)
    autocast = autocast_factory(device, "none")
    losses = []
    try:
        model.train()  # dropout in generator and trunk, as in a step-2 iteration
        for iteration in range(settings.iterations):
            seed = iteration_seed(settings.seed, iteration)
            torch.manual_seed(seed)
            terms = classifier_step(model, batch_size, grid_size, optimizers, loss, unseen_rate,
                                    torch.Generator().manual_seed(seed), device, autocast)
            losses.append(terms["step2_cls_fake"])
    finally:
        for parameter, flag in flags.items():
            parameter.requires_grad_(flag)
        model.eval()
    return losses


def extend_model(model: nn.Module, rows: torch.Tensor, grid_size: tuple[int, int],
                 batch_size: int, unseen_rate: float, settings: ExtensionSettings,
                 device: torch.device) -> dict:
    """Add the classes (see the module docstring) and finetune; returns a summary."""
    num_before = model.num_classes
    add_unseen_classes(model, rows.to(device))
    losses = finetune_classifier(model, grid_size, batch_size, unseen_rate, settings, device)
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
    import json

    from cagnet.builders import resolve_path
    from cagnet.class_embeddings import sidecar_path

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


def extend_inference_model(inference, names: Sequence[str],
                           word_vectors: Sequence[tuple[str, str]] = (),
                           embeddings_file: str | None = None,
                           settings: ExtensionSettings | None = None) -> dict:
    """Extend an `InferenceModel` (cagnet.inference) in memory; returns a summary with the
    embedding provenance. The grid is the model's feature grid of a training crop."""
    settings = settings or ExtensionSettings()
    config = inference.config
    if config.baseline.method != "cagnet":
        raise CagnetError(f"extending a {config.baseline.method} model: new classes are learnt "
                          "from CaGNet's feature generator, so only cagnet checkpoints "
                          "(baseline.method: cagnet) can be extended")
    rows, metadata = new_class_embeddings(names, inference.model.class_embeddings.shape[1],
                                          word_vectors, embeddings_file)
    _check_same_sources(config, metadata)
    model = inference.model
    grid = tuple(model.feature_size(config.data.crop_size, config.data.crop_size))
    summary = extend_model(
        model, rows, grid, settings.batch_size or config.train.batch_size,
        config.train.gen_unseen_rate if settings.unseen_rate is None else settings.unseen_rate,
        settings, inference.device)
    inference.class_names = inference.class_names + list(names)
    inference.added_classes = inference.added_classes + list(names)
    sources = [{key: source.get(key) for key in ("kind", "path", "sha256", "dim")}
               for source in metadata.get("sources") or [] if isinstance(source, dict)]
    return {**summary, "added_classes": list(names),
            "embedding": {"file": embeddings_file, "sources": sources,
                          "rule": metadata.get("rule")}}
