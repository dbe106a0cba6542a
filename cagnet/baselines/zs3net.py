"""ZS3Net (`baseline.method: zs3net`) on CaGNet's frozen step-1 network: a GMMN generator
trained with multi-kernel MMD, then the classifier retrained on real labelled pixels and
generated unseen ones (method.md §7).
"""

from pathlib import Path
from typing import Sequence

import torch

from cagnet import losses
from cagnet.baselines.spnet import BaselineTraining, start_baseline
from cagnet.config import Config
from cagnet.datasets.build import Benchmark
from cagnet.engine import loop
from cagnet.engine.checkpoint import check_same_classes, load_checkpoint, load_weights
from cagnet.engine.execution import Execution
from cagnet.engine.schedules import iteration_seed, step_decay
from cagnet.losses import IGNORE_INDEX, mmd
from cagnet.models.build import build_cagnet
from cagnet.models.cagnet_model import CaGNet
from cagnet.models.gmmn import GMMNGenerator


def sample_class_pixels(features: torch.Tensor, labels: torch.Tensor, max_pixels: int,
                        generator: torch.Generator | None = None
                        ) -> list[tuple[int, torch.Tensor]]:
    """(class index, (n, F) pixel rows) per (image, class) present in features (B, F, h, w) /
    labels (B, h, w) (255 ignored), image-major; at most `max_pixels` random rows a group."""
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
    """Frozen scale-1 features (B, F, h, w) of a training batch (backbone and contextual module
    in eval mode) and its labels nearest-resized to their grid (B, h, w)."""
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
    """Sum of w_i * CE_i / sum of w_i over the real labelled pixels of features (B, F, h, w) /
    labels (B, h, w) (w = 1) and `count` generated pixels of each unseen class
    (w = `unseen_weight`): ZS3Net's class-weighted cross-entropy. Pseudo-labelled unseen
    pixels are real and weigh 1: weighting them 100 would let millions of noisy pseudo-labels
    outweigh every seen class."""
    valid = labels != IGNORE_INDEX
    real_rows = features.permute(0, 2, 3, 1)[valid]
    unseen = torch.arange(model.num_seen, model.num_classes, device=features.device)
    fake_labels = unseen.repeat_interleave(count)
    with torch.no_grad():
        fake_rows = gmmn.generate(model.class_embeddings[fake_labels], noise)
    logits = model.discriminator(torch.cat([real_rows, fake_rows.float()])).class_logits
    targets = torch.cat([labels[valid], fake_labels])
    weights = torch.ones(len(targets), device=features.device)
    weights[real_rows.shape[0]:] = float(unseen_weight)
    terms = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return (weights * terms).sum() / weights.sum().clamp(min=1e-12)


class ZS3NetTraining(BaselineTraining):
    """The GMMN (iterations 0..G-1), then the classifier (G..G+C-1), on one batch stream.
    Backbone and contextual module are CaGNet's step-1 ones, frozen, so a comparison isolates
    context-free generation from context-aware; the classifier is CaGNet's (from step 1): the
    checkpoint is a plain CaGNet network with the GMMN in `extra["zs3net_generator"]`."""

    name, report_title = "zs3net", "ZS3Net (GMMN + retrained classifier)"

    def __init__(self, config: Config, benchmark: Benchmark, model: CaGNet,
                 execution: Execution, init_checkpoint: str | Path) -> None:
        zs3net, optim = config.baseline.zs3net, config.optim
        self.init_checkpoint = init_checkpoint
        self.gmmn = GMMNGenerator(model.class_embeddings.shape[1], model.generator.feature_dim,
                                  zs3net.hidden, zs3net.dropout).to(execution.device)
        betas = tuple(optim.adam_betas)
        self.optimizers = {
            "gmmn": torch.optim.Adam(self.gmmn.parameters(), lr=zs3net.generator_lr, betas=betas),
            "classifier": torch.optim.Adam(model.discriminator.parameters(),
                                           lr=optim.discriminator_lr, betas=betas,
                                           weight_decay=optim.discriminator_weight_decay)}
        self.generator_iterations = zs3net.generator_iterations
        super().__init__(config, benchmark, model, execution)

    def initialise(self) -> None:
        state = load_checkpoint(self.init_checkpoint)
        check_same_classes(state, self.class_names, self.init_checkpoint)
        load_weights(self.model, state, self.init_checkpoint, self.config["model"])

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
        noise = torch.Generator().manual_seed(iteration_seed(self.settings.train.seed, iteration))
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
    config, device, benchmark = start_baseline(config, "zs3net")
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen,
                         config.data.mean_bgr, load_pretrained=False)  # the init brings all
    execution = Execution.single(device, config.train.batch_size)
    method = ZS3NetTraining(config, benchmark, model.to(device), execution, init_checkpoint)
    zs3net = config.baseline.zs3net
    settings = loop.LoopSettings.from_train(
        config.train, zs3net.generator_iterations + zs3net.classifier_iterations)
    return loop.run(method, settings, run_dir, execution=execution, resume=resume,
                    overwrite=overwrite, show_progress=show_progress)
