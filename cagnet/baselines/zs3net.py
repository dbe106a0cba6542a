"""The ZS3Net stage (`baseline.method: zs3net`) on CaGNet's step-1 network.

Design (documented choice, method.md §7): ZS3Net shares CaGNet's step-1 backbone AND contextual
module, frozen; its real features are `model.features(images, sample_latent=False).feature`
(the same (0, 1) pixel features CaGNet's classifier sees), so a comparison with CaGNet isolates
context-free generation (GMMN, noise) from context-aware generation. The final classifier is
CaGNet's discriminator trunk + cls head, started from the step-1 weights exactly like CaGNet's
finetune; the resulting checkpoint is therefore a plain CaGNet network (`cagnet eval` works on
it) with the GMMN stored in `extra["zs3net_generator"]`.

1. GMMN: for each (image, class) of the training labels, up to `pixels_per_class` real pixels
   against as many generated ones, multi-kernel MMD (sigma 2 ... 80), Adam.
2. Classifier: each batch = the real labelled pixels (seen classes, plus pseudo-labelled unseen
   ones when self-training) + generated pixels of every unseen class, cross-entropy with the
   generated unseen pixels weighted `unseen_weight` (100; real pixels, pseudo-labelled ones
   included, weigh 1); Adam with `optim.discriminator_*`.

Both stages are one method of the one loop: iterations 0..G-1 train the GMMN, G..G+C-1 the
classifier, on one stream of training batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cagnet import losses
from cagnet.config import Config, config_to_dict, save_config
from cagnet.datasets.build import (Benchmark, build_benchmark, build_dataset, build_eval_loader,
                                   with_absolute_paths)
from cagnet.engine import loop
from cagnet.engine.checkpoint import check_same_classes, load_checkpoint, load_weights
from cagnet.engine.evaluate import evaluate_and_report
from cagnet.engine.execution import Execution
from cagnet.engine.protocol import protocol_card
from cagnet.engine.schedules import iteration_seed, step_decay
from cagnet.errors import ConfigError
from cagnet.losses import mmd
from cagnet.models.build import build_cagnet
from cagnet.models.cagnet_model import CaGNet
from cagnet.models.gmmn import GMMNGenerator
from cagnet.utils.io import atomic_write_json
from cagnet.utils.runtime import RunLog, apply_run_settings, resolve_device

IGNORE_INDEX = 255


def sample_class_pixels(features: torch.Tensor, labels: torch.Tensor, max_pixels: int,
                        generator: torch.Generator | None = None
                        ) -> list[tuple[int, torch.Tensor]]:
    """Group real pixels by (image, class), keeping at most `max_pixels` random ones per group.

    Args:
        features: (B, F, h, w) real features; labels: (B, h, w) class indices, 255 ignored.
    Returns:
        (class index, (n, F) pixel rows) per (image, class) present, image-major.
    """
    groups = []
    for image_features, image_labels in zip(features, labels):
        rows = image_features.flatten(1).t()  # (h * w, F)
        flat = image_labels.flatten()
        for class_index in torch.unique(flat[flat != 255]).tolist():
            positions = torch.nonzero(flat == class_index).squeeze(1)
            if positions.numel() > max_pixels:
                order = torch.randperm(positions.numel(), generator=generator)
                positions = positions[order[:max_pixels].to(positions.device)]
            groups.append((int(class_index), rows[positions]))
    return groups


def generator_loss(generator_network: GMMNGenerator, class_embeddings: torch.Tensor,
                   groups: Sequence[tuple[int, torch.Tensor]], sigmas: Sequence[float],
                   noise: torch.Generator | None = None) -> torch.Tensor:
    """Mean over groups of the multi-kernel MMD between the group's real rows (n, F) and as
    many generated rows of its class (ZS3Net's GMMN loss, kernel exp(-d / (2 sigma)))."""
    if not groups:
        return class_embeddings.new_zeros(()) + sum(
            parameter.sum() * 0 for parameter in generator_network.parameters())
    terms = []
    for class_index, real in groups:
        condition = class_embeddings[class_index].expand(real.shape[0], -1)
        fake = generator_network.generate(condition, noise)
        terms.append(mmd(fake, real.detach(), sigmas))
    return torch.stack(terms).mean()


@torch.no_grad()
def real_features(model: CaGNet, batch: dict, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen scale-1 features (B, F, h, w) of a training batch and its labels (B, h, w)
    nearest-resized to the feature grid. Backbone and contextual module run in eval mode."""
    model.backbone.eval()
    model.context.eval()
    features = model.features(batch["image"].to(device), sample_latent=False).feature.float()
    labels = losses.resize_labels(batch["label"].to(device), features.shape[-2:])
    return features, labels


def generated_count(labels: torch.Tensor, num_seen: int, fixed: int) -> int:
    """Generated pixels per unseen class in one classifier batch: `fixed` when > 0, else the
    average number of labelled pixels of the seen classes present in `labels` (at least 1)."""
    if fixed > 0:
        return fixed
    seen = labels[(labels != IGNORE_INDEX) & (labels < num_seen)]
    present = int(torch.unique(seen).numel())
    return max(1, round(seen.numel() / present)) if present else 1


def classifier_batch_loss(model: CaGNet, gmmn: GMMNGenerator, features: torch.Tensor,
                          labels: torch.Tensor, count: int, unseen_weight: float,
                          noise: torch.Generator) -> torch.Tensor:
    """Weighted cross-entropy of the classifier over the real labelled pixels of
    features (B, F, h, w) / labels (B, h, w) (weight 1) and `count` generated pixels of each
    unseen class (weight `unseen_weight`): sum of w_i * CE_i / sum of w_i.

    Without self-training the generated pixels are the only unseen ones, so this is ZS3Net's
    class-weighted cross-entropy. Pseudo-labelled unseen pixels are real, annotated pixels
    and weigh 1 like every real pixel: weighting them 100 too would let millions of noisy
    pseudo-labels outweigh every seen class."""
    valid = labels != IGNORE_INDEX
    real_rows = features.permute(0, 2, 3, 1)[valid]
    unseen = torch.arange(model.num_seen, model.num_classes, device=features.device)
    fake_labels = unseen.repeat_interleave(count)
    with torch.no_grad():
        fake_rows = gmmn.generate(model.class_embeddings[fake_labels], noise)
    logits = model.discriminator(torch.cat([real_rows, fake_rows.float()])).class_logits
    targets = torch.cat([labels[valid], fake_labels])
    weights = torch.cat([torch.ones(real_rows.shape[0], device=features.device),
                         torch.full((fake_rows.shape[0],), float(unseen_weight),
                                    device=features.device)])
    terms = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return (weights * terms).sum() / weights.sum().clamp(min=1e-12)


class ZS3NetTraining(loop.Method):
    """The GMMN, then the classifier, on the frozen step-1 features of `init_checkpoint`."""

    name = "zs3net"

    def __init__(self, config: Config, benchmark: Benchmark, model: CaGNet,
                 execution: Execution, init_checkpoint: str | Path) -> None:
        self.settings, self.benchmark, self.model = config, benchmark, model
        self.execution, self.init_checkpoint = execution, init_checkpoint
        self.config = config_to_dict(config)
        self.class_names = benchmark.split.model_class_names
        self.num_seen = benchmark.split.num_seen
        zs3net, optim = config.baseline.zs3net, config.optim
        self.gmmn = GMMNGenerator(model.class_embeddings.shape[1], model.generator.feature_dim,
                                  zs3net.hidden, zs3net.dropout).to(execution.device)
        betas = tuple(optim.adam_betas)
        self.optimizers = {
            "gmmn": torch.optim.Adam(self.gmmn.parameters(), lr=zs3net.generator_lr,
                                     betas=betas),
            "classifier": torch.optim.Adam(model.discriminator.parameters(),
                                           lr=optim.discriminator_lr, betas=betas,
                                           weight_decay=optim.discriminator_weight_decay)}
        self.generator_iterations = zs3net.generator_iterations
        self.dataset = build_dataset(config.data, benchmark.split, config.train.seed)
        self.num_workers = config.data.num_workers

    def initialise(self) -> None:
        state = load_checkpoint(self.init_checkpoint)
        check_same_classes(state, self.class_names, self.init_checkpoint)
        load_weights(self.model, state, self.init_checkpoint, self.config["model"])

    def write_run_files(self, run_dir: Path) -> None:
        save_config(self.settings, run_dir / "config.yaml")
        atomic_write_json(run_dir / "protocol.json", protocol_card(
            self.settings, self.benchmark.split, self.benchmark.embedding_dim))

    def set_learning_rates(self, iteration: int) -> dict[str, float]:
        optim, decay = self.settings.optim, self.settings.optim.discriminator_decay
        if iteration < self.generator_iterations:
            return {"gmmn": self.settings.baseline.zs3net.generator_lr}
        rate = optim.discriminator_lr * step_decay(iteration - self.generator_iterations,
                                                   decay.start, decay.step, decay.gamma)
        for group in self.optimizers["classifier"].param_groups:
            group["lr"] = rate
        return {"classifier": rate}

    def step(self, iteration: int, batch: dict | None) -> dict[str, float]:
        zs3net, device = self.settings.baseline.zs3net, self.execution.device
        noise = torch.Generator().manual_seed(iteration_seed(self.settings.train.seed,
                                                             iteration))
        features, labels = real_features(self.model, batch, device)
        self.gmmn.train()  # ZS3Net never switches its generator to eval: dropout stays on
        if iteration < self.generator_iterations:
            groups = sample_class_pixels(features, labels, zs3net.pixels_per_class, noise)
            loss = generator_loss(self.gmmn, self.model.class_embeddings, groups,
                                  zs3net.mmd_sigmas, noise)
            optimizer, terms = self.optimizers["gmmn"], {"mmd": float(loss.detach()),
                                                          "groups": float(len(groups))}
        else:
            count = generated_count(labels, self.model.num_seen,
                                    zs3net.generated_pixels_per_class)
            self.model.discriminator.train()
            loss = classifier_batch_loss(self.model, self.gmmn, features, labels, count,
                                         zs3net.unseen_weight, noise)
            optimizer, terms = self.optimizers["classifier"], {
                "cls_weighted": float(loss.detach()), "generated_per_class": float(count)}
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return {**terms, "skipped": 1.0}
        loss.backward()
        optimizer.step()
        return {**terms, "skipped": 0.0}

    def evaluate(self, report_dir: Path | None, log: RunLog) -> dict:
        config, split = self.settings, self.benchmark.split
        card = protocol_card(config, split, self.benchmark.embedding_dim)
        return evaluate_and_report(self.model, build_eval_loader(config, split), config.eval,
                                   split, card, self.execution.device, report_dir,
                                   f"{config.name}: ZS3Net (GMMN + retrained classifier)")

    def extra_state(self) -> dict:
        return {"zs3net_generator": {key: value.detach().cpu()
                                     for key, value in self.gmmn.state_dict().items()},
                "init_checkpoint": str(self.init_checkpoint)}

    def load_extra_state(self, extra: dict) -> None:
        self.gmmn.load_state_dict(extra["zs3net_generator"])


def train_zs3net(config: Config, run_dir: str | Path, init_checkpoint: str | Path, *,
                 resume: bool = False, overwrite: bool = False, show_progress: bool = True
                 ) -> loop.TrainResult:
    """Train the GMMN and the classifier on `init_checkpoint`'s frozen features; write the run
    (checkpoints/last.pt, log.jsonl, metrics.json, report.md) into `run_dir`."""
    if config.baseline.method != "zs3net":
        raise ConfigError(f"baseline.method: train_zs3net needs 'zs3net', got "
                          f"{config.baseline.method!r}")
    config = with_absolute_paths(config)
    device = resolve_device(config.train.device)
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    benchmark = build_benchmark(config)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                         config.data.mean_bgr, load_pretrained=False)  # the init brings all
    execution = Execution.single(device, config.train.batch_size)
    method = ZS3NetTraining(config, benchmark, model.to(device), execution, init_checkpoint)
    zs3net = config.baseline.zs3net
    settings = loop.LoopSettings.from_train(
        config.train, zs3net.generator_iterations + zs3net.classifier_iterations)
    return loop.run(method, settings, run_dir, execution=execution, resume=resume,
                    overwrite=overwrite, show_progress=show_progress)
