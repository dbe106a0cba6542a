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
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cagnet import losses
from cagnet.baselines.gmmn import GMMNGenerator, generator_loss, sample_class_pixels
from cagnet.baselines.loop import run_iterations
from cagnet.builders import build_benchmark, build_datasets, build_model, resolve_device
from cagnet.config import Config, config_to_dict, save_config
from cagnet.engine.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from cagnet.engine.protocol import write_protocol_card
from cagnet.engine.run_dir import open_run_log, prepare_run_dir
from cagnet.engine.schedules import iteration_seed, step_decay
from cagnet.engine.trainer import TrainResult
from cagnet.engine.validation import evaluate_and_report
from cagnet.errors import CheckpointError, ConfigError
from cagnet.models import CaGNet
from cagnet.utils.runtime import RunLog, apply_run_settings

LOGGER = logging.getLogger("cagnet")
IGNORE_INDEX = 255


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


def train_zs3net(config: Config, run_dir: str | Path, init_checkpoint: str | Path, *,
                 overwrite: bool = False, show_progress: bool = True) -> TrainResult:
    """Train the GMMN and the classifier on `init_checkpoint`'s frozen features; write the run
    (checkpoints/last.pt, log.jsonl, metrics.json, report.md) into `run_dir`."""
    if config.baseline.method != "zs3net":
        raise ConfigError(f"baseline.method: train_zs3net needs 'zs3net', got "
                          f"{config.baseline.method!r}")
    run_dir = Path(run_dir)
    device = resolve_device(config.train.device)
    prepare_run_dir(run_dir, False, overwrite)
    apply_run_settings(config.train.threads, config.train.seed, config.train.deterministic)
    benchmark = build_benchmark(config)
    model = build_model(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    state = load_checkpoint(init_checkpoint)
    if state.get("class_names") != benchmark.split.model_class_names:
        raise CheckpointError(f"{init_checkpoint} was trained for classes "
                              f"{state.get('class_names')}, this config has "
                              f"{benchmark.split.model_class_names}")
    load_model_state(model, state, init_checkpoint)
    model.to(device)
    zs3net = config.baseline.zs3net
    embed_dim = model.class_embeddings.shape[1]
    gmmn = GMMNGenerator(embed_dim, embed_dim, zs3net.hidden, zs3net.dropout).to(device)
    save_config(config, run_dir / "config.yaml")
    write_protocol_card(run_dir, config, benchmark)
    dataset = build_datasets(config.data, benchmark.split, config.train.seed, train=True)
    log = open_run_log(run_dir, None)
    try:
        _train_generator(model, gmmn, dataset, config, log, device, show_progress)
        _train_classifier(model, gmmn, dataset, config, log, device, show_progress)
        checkpoint = save_checkpoint(
            run_dir / "checkpoints" / "last.pt", model=model,
            iteration=zs3net.classifier_iterations, config=config_to_dict(config),
            class_names=benchmark.split.model_class_names, num_seen=benchmark.split.num_seen,
            extra={"zs3net_generator": {key: value.detach().cpu()
                                        for key, value in gmmn.state_dict().items()},
                   "init_checkpoint": str(init_checkpoint)})
        title = f"{config.name}: ZS3Net (GMMN + retrained classifier)"
        scores = evaluate_and_report(model, config, benchmark, device, run_dir, title)
        log.write("val", zs3net.classifier_iterations,
                  {key: value for key, value in scores.items() if isinstance(value, float)})
    finally:
        log.close()
    return TrainResult(run_dir, checkpoint, scores)


def _train_generator(model: CaGNet, gmmn: GMMNGenerator, dataset, config: Config, log: RunLog,
                     device: torch.device, show_progress: bool) -> None:
    zs3net, train = config.baseline.zs3net, config.train
    optimizer = torch.optim.Adam(gmmn.parameters(), lr=zs3net.generator_lr,
                                 betas=tuple(config.optim.adam_betas))

    def step(iteration: int, batch: dict) -> dict[str, float]:
        noise = torch.Generator().manual_seed(iteration_seed(train.seed, iteration))
        features, labels = real_features(model, batch, device)
        groups = sample_class_pixels(features, labels, zs3net.pixels_per_class, noise)
        gmmn.train()
        loss = generator_loss(gmmn, model.class_embeddings, groups, zs3net.mmd_sigmas, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"mmd": float(loss.detach()), "groups": float(len(groups))}

    run_iterations(step, dataset, total=zs3net.generator_iterations,
                   batch_size=train.batch_size, seed=train.seed,
                   num_workers=config.data.num_workers, log=log,
                   log_interval=train.log_interval, log_kind="generator",
                   show_progress=show_progress)


def _train_classifier(model: CaGNet, gmmn: GMMNGenerator, dataset, config: Config,
                      log: RunLog, device: torch.device, show_progress: bool) -> None:
    zs3net, train, optim = config.baseline.zs3net, config.train, config.optim
    discriminator = model.discriminator
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=optim.discriminator_lr,
                                 betas=tuple(optim.adam_betas),
                                 weight_decay=optim.discriminator_weight_decay)
    decay = optim.discriminator_decay

    def step(iteration: int, batch: dict) -> dict[str, float]:
        rate = optim.discriminator_lr * step_decay(iteration, decay.start, decay.step,
                                                   decay.gamma)
        for group in optimizer.param_groups:
            group["lr"] = rate
        noise = torch.Generator().manual_seed(iteration_seed(train.seed, iteration))
        features, labels = real_features(model, batch, device)
        count = generated_count(labels, model.num_seen, zs3net.generated_pixels_per_class)
        gmmn.train()  # ZS3Net never switches its generator to eval: dropout stays on
        discriminator.train()
        loss = classifier_batch_loss(model, gmmn, features, labels, count,
                                     zs3net.unseen_weight, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"cls_weighted": float(loss.detach()), "generated_per_class": float(count),
                "lr_classifier": rate}

    run_iterations(step, dataset, total=zs3net.classifier_iterations,
                   batch_size=train.batch_size, seed=train.seed + 1,
                   num_workers=config.data.num_workers, log=log,
                   log_interval=train.log_interval, log_kind="classifier",
                   show_progress=show_progress)
