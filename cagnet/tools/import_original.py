"""`cagnet import-checkpoint`: original CaGNet checkpoints (method.md §6) -> cagnet checkpoints,
and DeepLab-v2 init files or torchvision ResNets -> `{"backbone": ...}` files for `model.init`.
Both are strict: every problem (unmatched, mis-shaped or missing key) is listed in one
CheckpointError."""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cagnet.errors import CheckpointError
from cagnet.tools.original_keys import (EMBEDDING_TABLES, aspp_key, original_key,
                                        to_original_key, torchvision_trunk_key, trunk_key)
from cagnet.utils.io import load_torch_file

LOGGER = logging.getLogger("cagnet")
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
INIT_PREFIXES = ("module.", "back.scale.", "scale.", "back.")
IGNORED_INIT_PREFIXES = ("fc", "classifier.", "contextual", "gen.", "dis.", "Em_")


@dataclass
class Conversion:
    """A converted state dict and what happened on the way."""

    state: dict[str, torch.Tensor]
    consumed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict[str, torch.Tensor] = field(default_factory=dict)


def load_original(path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """Read a foreign weight file with weights_only: `{"state_dict": ..., "iteration"}` or a
    flat dict of tensors (plus an optional `iteration`). Returns the tensors, without a `module.`
    prefix shared by every key (DataParallel), and the iteration (0 when absent)."""
    path = Path(path)
    content = load_torch_file(path, f"weight file not found: {path}", lambda error: (
        f"{path} is corrupt, truncated or holds Python objects other than tensors (loaded with "
        f"weights_only=True): {str(error).strip().splitlines()[0] if str(error) else error}"))
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(content).__name__}")
    iteration = content.get("iteration", 0)
    weights = content.get("state_dict", content)
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: 'state_dict' is not a dict of tensors")
    other = sorted(str(k) for k, v in weights.items()
                   if not isinstance(v, torch.Tensor) and k != "iteration")
    if other:
        raise CheckpointError(f"{path}: entries that are not tensors: {other[:10]}")
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors, int(iteration) if isinstance(iteration, int) else 0


def convert_original(original: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                     num_generator_hidden: int) -> Conversion:
    """Map an original CaGNet state dict onto `reference` (the model's state dict: names and
    shapes; meta tensors are fine). The classifier rows are in split order (seen, then unseen),
    the model order too; the original's extra, never trained last row is dropped unless
    `model.extra_logit` gives the model one. Raises CheckpointError listing every problem."""
    result, problems, attempted = Conversion({}), [], set()
    for key, value in original.items():
        if key in EMBEDDING_TABLES:
            result.tables[key] = value
            result.consumed.append(key)
            continue
        # A BatchNorm's counter maps wherever its running mean does (and is dropped).
        target = original_key(key.replace("num_batches_tracked", "running_mean"),
                              num_generator_hidden)
        if key.endswith("num_batches_tracked"):
            if target is None or target not in reference or value.numel() != 1:
                problems.append(f"{key}: unmatched (no BatchNorm of the model takes it)")
            else:
                result.consumed.append(key)
            continue
        if target is None or target not in reference:
            problems.append(f"{key}: unmatched (no model key"
                            + (f"; it would be {target})" if target else ")"))
            continue
        if target in result.state:
            problems.append(f"{key}: maps to {target}, which another key already filled")
            continue
        attempted.add(target)
        expected = tuple(reference[target].shape)
        if target.startswith("discriminator.classifier.") and value.shape[0] == expected[0] + 1:
            result.notes.append(f"{key}: dropped the original's extra logit row "
                                "(model.extra_logit false)")
            value = value[:expected[0]]
        if tuple(value.shape) != expected:
            problems.append(f"{key}: shape {tuple(value.shape)}, but {target} has {expected}")
            continue
        result.state[target] = value
        result.consumed.append(key)
    for target in reference:
        if target != "class_embeddings" and target not in attempted:
            try:
                source = to_original_key(target, num_generator_hidden)
            except KeyError:
                source = "?"
            problems.append(f"{source}: missing (model key {target})")
    if problems:
        raise CheckpointError(f"{len(problems)} keys of the original checkpoint do not match "
                              "the model built from this config:\n  " + "\n  ".join(problems))
    return result


def check_embedding_tables(tables: dict[str, torch.Tensor], class_embeddings: torch.Tensor,
                           class_names: list[str], num_seen: int) -> list[str]:
    """Compare `Em_all` (K, E) and `Em_vis` (>= S, E) with the project's rows (model order).
    Returns the mis-shaped tables (errors); rows that differ in direction (cosine < 0.999:
    another embedding file or class order) only log a warning, the model uses the project's."""
    errors = []
    expected = {"Em_all.weight": class_embeddings, "Em_vis.weight": class_embeddings[:num_seen]}
    for name, rows in expected.items():
        table = tables.get(name)
        if table is None:
            LOGGER.warning("the original checkpoint has no %s; embeddings not compared", name)
            continue
        if table.dim() != 2 or table.shape[1] != rows.shape[1] or table.shape[0] < rows.shape[0]\
                or (name == "Em_all.weight" and table.shape[0] != rows.shape[0]):
            errors.append(f"{name}: shape {tuple(table.shape)}, expected {tuple(rows.shape)}"
                          + (" (or more rows)" if name == "Em_vis.weight" else ""))
            continue
        if table.is_meta or rows.is_meta:
            continue
        ours = torch.nn.functional.normalize(rows.float(), dim=1)
        theirs = torch.nn.functional.normalize(table[:rows.shape[0]].float(), dim=1)
        cosine = (ours * theirs).sum(dim=1)
        differing = [f"{class_names[i]} ({cosine[i]:.3f})" for i in range(len(cosine))
                     if cosine[i] < 0.999]
        if differing:
            LOGGER.warning("%s differs from the project's embedding file in %d rows (cosine): "
                           "%s; the imported model uses the project's file", name,
                           len(differing), ", ".join(differing[:10]))
    return errors


def convert_backbone_init(weights: dict[str, torch.Tensor],
                          reference: dict[str, torch.Tensor]) -> Conversion:
    """DeepLab-v2 init or torchvision ResNet -> the backbone's state dict (`reference`): every
    trunk key (stem, res2..res5) must be present; an ASPP of the model's shape is kept (the
    original loads the whole init, e.g. COCO-Stuff's SPNet init with its trained 600-d ASPP),
    other ASPPs (DeepLab's class scores) and heads (`fc*`) are ignored. torchvision's conv1
    (RGB in [0, 1] over its std) is converted to BGR 0..255 minus the mean (channels reversed,
    divided by 255 * std; the two means differ by under one grey level, which is ignored)."""
    torchvision = "conv1.weight" in weights and "bn1.running_mean" in weights
    mapping = torchvision_trunk_key if torchvision else trunk_key
    result, problems = Conversion({}), []
    for key, value in weights.items():
        inner = key
        for prefix in INIT_PREFIXES:
            inner = inner.removeprefix(prefix)
        if inner.startswith(IGNORED_INIT_PREFIXES):
            result.ignored.append(key)
            continue
        target = mapping(inner.replace("num_batches_tracked", "running_mean")) or aspp_key(inner)
        if target is not None and target.startswith("aspp.") and (
                target not in reference or value.shape != reference[target].shape):
            result.ignored.append(key)
            continue
        if target is None or target not in reference:
            problems.append(f"{key}: unmatched (no trunk key)")
            continue
        if key.endswith("num_batches_tracked"):
            result.consumed.append(key)
            continue
        if torchvision and target == "stem.conv.weight" and value.shape[1] == 3:
            std = torch.tensor(TORCHVISION_STD_RGB, dtype=value.dtype)
            value = (value / (255.0 * std).view(1, 3, 1, 1)).flip(1)
            result.notes.append("conv1 converted from torchvision's normalised RGB input to "
                                "BGR 0..255 minus the mean")
        if tuple(value.shape) != tuple(reference[target].shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, but {target} has "
                            f"{tuple(reference[target].shape)}")
            continue
        result.state[target] = value
        result.consumed.append(key)
    problems += [f"{key}: missing from the init file" for key in reference
                 if not key.startswith("aspp.") and key not in result.state]
    if problems:
        raise CheckpointError(f"{len(problems)} keys of the init file do not match the "
                              "configured backbone trunk:\n  " + "\n  ".join(problems))
    return result


def import_checkpoint(original_path: str | Path, out_path: str | Path, config) -> dict:
    """Convert an original CaGNet checkpoint for the model of `config` (a resolved Config) and
    write a cagnet checkpoint to `out_path`. Returns a summary (counts, notes)."""
    from cagnet.config import config_to_dict
    from cagnet.datasets.build import build_benchmark
    from cagnet.engine.checkpoint import save_checkpoint
    from cagnet.models.build import build_cagnet

    original, iteration = load_original(original_path)
    benchmark = build_benchmark(config)
    split = benchmark.split
    model = build_cagnet(config.model, benchmark.class_embeddings, split.num_seen,
                         config.data.mean_bgr, load_pretrained=False)
    reference = model.state_dict()
    conversion = convert_original(original, reference, len(config.model.generator_hidden))
    errors = check_embedding_tables(conversion.tables, reference["class_embeddings"],
                                    split.model_class_names, split.num_seen)
    if errors:
        raise CheckpointError(f"{original_path}: mis-shaped embedding tables:\n  "
                              + "\n  ".join(errors))
    conversion.state["class_embeddings"] = reference["class_embeddings"]
    model.load_state_dict(conversion.state, strict=True)
    save_checkpoint(out_path, model=model, iteration=iteration, config=config_to_dict(config),
                    class_names=split.model_class_names, num_seen=split.num_seen,
                    extra={"imported_from": str(original_path), "import_notes": conversion.notes})
    return {"keys": len(original), "consumed": len(conversion.consumed),
            "iteration": iteration, "notes": conversion.notes}


def import_backbone_init(weights_path: str | Path, out_path: str | Path, config) -> dict:
    """Convert a DeepLab-v2 init file or a torchvision ResNet into `{"backbone": ...}` for
    `model.init` of `config`. Returns a summary (counts, ignored keys, notes)."""
    from cagnet.class_embeddings import load_class_embeddings
    from cagnet.datasets.build import resolve_path
    from cagnet.errors import CagnetError
    from cagnet.models import DeepLabV2
    from cagnet.utils.io import atomic_torch_save

    weights, _ = load_original(weights_path)
    model = config.model
    try:  # the ASPP's width is the embedding dimension: an ASPP of that width is kept
        embed_dim = load_class_embeddings(resolve_path(config.embeddings.path,
                                                       config.data.root))[0].shape[1]
    except CagnetError:
        embed_dim = 0
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        backbone = DeepLabV2(blocks_per_stage=tuple(model.blocks_per_stage),
                             base_width=model.base_width, embed_dim=max(embed_dim, 1),
                             aspp_dilations=tuple(model.aspp_dilations))
    conversion = convert_backbone_init(weights, backbone.state_dict())
    atomic_torch_save(out_path, {"backbone": {key: value.contiguous() for key, value
                                              in conversion.state.items()},
                                 "source": str(weights_path), "notes": conversion.notes})
    return {"keys": len(weights), "consumed": len(conversion.consumed),
            "ignored": conversion.ignored, "notes": conversion.notes}
