"""`cagnet eval`: rebuild the model from a checkpoint's stored config and evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cagnet.builders import build_benchmark, build_model, resolve_device
from cagnet.config import config_from_dict, load_config
from cagnet.engine.checkpoint import load_checkpoint, load_model_state
from cagnet.engine.validation import evaluate_and_report
from cagnet.errors import CheckpointError


def evaluate_checkpoint(checkpoint: str | Path, config_path: str | None = None,
                        overrides: Sequence[str] = (), out_dir: str | Path | None = None
                        ) -> tuple[dict, Path]:
    """Evaluate `checkpoint`. The architecture always comes from the checkpoint's config;
    `config_path` / `overrides` may change the data and evaluation settings (e.g.
    `--set eval.protocol=original`). Returns the scores and the report folder."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    stored = config_from_dict(state["config"])
    if config_path:
        config = load_config(config_path, overrides)
    else:
        config = config_from_dict(state["config"], overrides)
    config.model = stored.model
    benchmark = build_benchmark(config)
    if state.get("class_names") != benchmark.split.model_class_names:
        raise CheckpointError(f"{checkpoint} was trained for classes {state.get('class_names')},"
                              f" but the config names {benchmark.split.model_class_names}")
    model = build_model(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    load_model_state(model, state, checkpoint)
    device = resolve_device(config.train.device)
    model.to(device)
    target = Path(out_dir) if out_dir else checkpoint.parent.parent / f"eval_{checkpoint.stem}"
    title = f"{config.name}: evaluation of {checkpoint.name} (iteration {state['iteration']})"
    scores = evaluate_and_report(model, config, benchmark, device, target, title)
    return scores, target
