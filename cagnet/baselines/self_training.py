"""Self-training runs (method.md §5): CaGNet's trainer on pseudo-labelled step-1 batches, labelled
online by the current model (the original's `st` phase) or read from `data.pseudo_label_dir`
(`offline`, written by `pseudo_labels.py`)."""

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from cagnet import losses
from cagnet.baselines.pseudo_labels import top_p_rule
from cagnet.config import Config
from cagnet.engine import trainer
from cagnet.engine.loop import TrainResult
from cagnet.errors import ConfigError
from cagnet.models.cagnet_model import CaGNet


@contextlib.contextmanager
def zero_unseen_conditions(model: CaGNet) -> Iterator[None]:
    """Inside the block the unseen rows S..K-1 of `model.class_embeddings` are zero, so
    `model.condition` maps unseen labels to zero vectors; the rows are restored on exit."""
    buffer = model.class_embeddings
    saved = buffer[model.num_seen:].clone()
    with torch.no_grad():
        buffer[model.num_seen:] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            buffer[model.num_seen:] = saved


class SelfTraining(trainer.CaGNetTraining):
    """CaGNet training whose step-1 batches carry pseudo-labels: `online`, each batch labelled
    by the current model just before its update (`online_labels`); with
    `zero_embedding_for_pseudo_labels` (the original, whose step-1 condition table held only
    the seen classes) the generator sees zero vectors for unseen labels during step 1."""

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        settings = self.settings.self_training
        if batch is None:  # step 2
            return super().step(iteration, batch)
        if settings.labelling == "online":
            batch = {**batch, "label": self.online_labels(batch)}
        if not settings.zero_embedding_for_pseudo_labels:
            return super().step(iteration, batch)
        with zero_unseen_conditions(self.model):
            return super().step(iteration, batch)

    @torch.no_grad()
    def online_labels(self, batch: dict) -> torch.Tensor:
        """(b, h, w) grid labels: the batch's own labels, resized (nearest) to the feature
        grid, with the current model's (eval-mode) top-p unseen class on the ignored pixels."""
        self.model.eval()
        logits = self.model.segment(self.execution.images_to_device(batch["image"])).float()
        labels = losses.resize_labels(batch["label"].to(logits.device), logits.shape[-2:])
        return top_p_rule(logits, labels, self.model.num_seen, self.settings.self_training.top_p)


def train_self_training(config: Config, run_dir: str | Path, init_checkpoint: str | Path, *,
                        overwrite: bool = False, show_progress: bool = True) -> TrainResult:
    """Step 1 or the mixed finetune (`config.train.stage`) on pseudo-labels (online, or from
    `data.pseudo_label_dir`), starting from `init_checkpoint`."""
    if config.self_training.labelling == "offline" and not config.data.pseudo_label_dir:
        raise ConfigError("data.pseudo_label_dir: offline self-training needs the pseudo-label "
                          "folder (written by cagnet.baselines.pseudo_labels)")
    return trainer.train(config, run_dir, init_checkpoint=init_checkpoint, overwrite=overwrite,
                         show_progress=show_progress, method_class=SelfTraining)
