"""`cagnet eval`: rebuild the model from a checkpoint's stored config and evaluate it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cagnet.builders import resolve_device
from cagnet.engine.validation import evaluate_and_report


def evaluate_checkpoint(checkpoint: str | Path, config_path: str | None = None,
                        overrides: Sequence[str] = (), out_dir: str | Path | None = None
                        ) -> tuple[dict, Path]:
    """Evaluate `checkpoint` of any method (CaGNet, ZS3Net, SPNet). The architecture always
    comes from the checkpoint's config; `config_path` / `overrides` may change the data and
    evaluation settings (e.g. `--set eval.protocol=original`). Returns the scores and the
    report folder."""
    from cagnet.baselines.methods import load_method_model

    checkpoint = Path(checkpoint)
    loaded = load_method_model(checkpoint, config_path, overrides)
    config, state = loaded.config, loaded.state
    device = resolve_device(config.train.device)
    model = loaded.model.to(device)
    target = Path(out_dir) if out_dir else checkpoint.parent.parent / f"eval_{checkpoint.stem}"
    title = f"{config.name}: evaluation of {checkpoint.name} (iteration {state['iteration']})"
    scores = evaluate_and_report(model, config, loaded.benchmark, device, target, title)
    return scores, target
