"""Self-training runs: CaGNet's trainer on pseudo-labelled training data (method.md §5).

The data side is `data.pseudo_label_dir` (cagnet/datasets/build.py): training labels come from the
pseudo-label folder, with pseudo-labelled unseen pixels mapped to their model index S..K-1.
The CaGNet step-1 iteration accepts those labels as they are: they are classification targets
for the real features, and `CaGNet.condition` gives each its class's real embedding as the
generator's condition (pseudo-labelled unseen features are then generated and matched too).

`self_training.zero_embedding_for_pseudo_labels: true` reproduces the original instead: its
step-1 condition table held only the seen classes' embeddings, so every pseudo-labelled pixel
was conditioned on a zero vector. That is done here by zeroing the unseen rows of the model's
embedding buffer for the duration of each step-1 iteration (the only unseen labels a step-1
batch holds are pseudo-labels) and restoring them before anything else runs; step-2
iterations, which sample unseen classes on purpose, keep the real embeddings.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

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


class ZeroPseudoEmbeddingTraining(trainer.CaGNetTraining):
    """CaGNet training whose step-1 iterations condition pseudo-labelled pixels on zeros."""

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        if batch is None:  # step 2
            return super().step(iteration, batch)
        with zero_unseen_conditions(self.model):
            return super().step(iteration, batch)


def train_self_training(config: Config, run_dir: str | Path, init_checkpoint: str | Path, *,
                        overwrite: bool = False, show_progress: bool = True
                        ) -> TrainResult:
    """Step 1 or the mixed finetune (`config.train.stage`) on `data.pseudo_label_dir`, starting
    from `init_checkpoint`. With the zero-embedding switch off this is exactly `train`."""
    if not config.data.pseudo_label_dir:
        raise ConfigError("data.pseudo_label_dir: a self-training run needs the pseudo-label "
                          "folder (written by cagnet.baselines.pseudo_labels)")
    method_class = (ZeroPseudoEmbeddingTraining
                    if config.self_training.zero_embedding_for_pseudo_labels
                    else trainer.CaGNetTraining)
    return trainer.train(config, run_dir, init_checkpoint=init_checkpoint, overwrite=overwrite,
                         show_progress=show_progress, method_class=method_class)
