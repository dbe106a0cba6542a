"""`cagnet extend` on checkpoint files: extend a checkpoint (cagnet.inference.extend), optionally put its
classes in the order of a split file, and write the new checkpoint with a split file beside it.

Class order matters wherever a checkpoint meets a dataset: `cagnet eval` requires the
checkpoint's classes in the order of the split file it evaluates with (seen, then unseen, each
in file order). Added classes come last; `--class-order SPLIT.yaml` permutes the unseen classes
(class-embedding rows and classifier rows together, which changes no prediction) into the
split's order, so an existing split that already lists the new class can be used as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import yaml

from cagnet.errors import CagnetError
from cagnet.inference.extend import ExtensionSettings, extend_inference_model, parse_class_list


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
    from cagnet.config import config_to_dict
    from cagnet.engine.checkpoint import load_checkpoint, save_checkpoint
    from cagnet.inference.model import InferenceModel, model_from_state
    from cagnet.utils.io import atomic_write_text

    device = device or torch.device("cpu")
    state = load_checkpoint(checkpoint)
    model, config = model_from_state(state, checkpoint)
    names = parse_class_list(names_text, state["class_names"])
    previous = (state.get("extra") or {}).get("extension") or {}
    inference = InferenceModel(model.to(device).eval(), config, list(state["class_names"]),
                               int(state["num_seen"]), list(previous.get("added_classes", [])),
                               device)
    summary = extend_inference_model(inference, names, word_vectors, embeddings_file, settings)
    if class_order:
        inference.class_names = reorder_classes(model, inference.class_names,
                                                inference.num_seen, *read_class_order(class_order))
    out = Path(out)
    split_path = out.with_name(out.stem + ".split.yaml").resolve()
    seen = inference.class_names[:inference.num_seen]
    unseen = inference.class_names[inference.num_seen:]
    atomic_write_text(split_path, f"# written by cagnet extend: the class order of {out.name}\n"
                      f"seen: {json.dumps(seen)}\nunseen: {json.dumps(unseen)}\n")
    summary.update(base_checkpoint=str(checkpoint),
                   base_split=previous.get("base_split", config.data.split),
                   added_classes=inference.added_classes, split_file=str(split_path),
                   added_now=list(names), class_order=class_order)
    config.data.split = str(split_path)
    save_checkpoint(out, model=model, iteration=state["iteration"],
                    config=config_to_dict(config), class_names=inference.class_names,
                    num_seen=inference.num_seen,
                    extra={"extension": summary, "base_extra_scores":
                           (state.get("extra") or {}).get("scores", {})})
    return summary
