"""The loss terms of CaGNet (method.md §1.2.7 and §2) as pure functions.

Every function returns a scalar tensor computed in fp32, connected to the autograd graph of its
inputs even when it is 0 (no valid pixel), so callers can always add and back-propagate it.
Coefficients are not here: they belong to the config and are applied by the training step.
Label value 255 is ignored everywhere.

Choices made by a config string go through module-level dicts: `ADVERSARIAL_LOSSES`
("l1" = the original's mislabelled "lsgan", "lsgan", "gan", "wgan_gp"), `CONTENT_LOSSES`
("mmd", "l1", "mse"), `MMD_GROUPINGS` ("class", "raster_runs") and `MMD_ESTIMATORS`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from cagnet.errors import ConfigError

IGNORE_INDEX = 255
DEFAULT_MMD_SIGMAS = (2.0, 5.0, 10.0, 20.0, 40.0, 60.0)


def _lookup(table: dict, kind: str, what: str):
    if kind not in table:
        raise ConfigError(f"unknown {what} {kind!r}; valid choices: {', '.join(sorted(table))}")
    return table[kind]


def _full_precision(reference: torch.Tensor) -> torch.autocast:
    """Switch autocast off, so that matmuls in delicate terms (MMD, gradient penalty) run in
    fp32 even when a caller computes the losses inside its autocast context."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


def _mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of any-shaped values; a graph-connected 0 when there are none."""
    return values.sum() / max(values.numel(), 1)


def _pixel_rows(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) maps and (B, h, w) mask -> (N, C) valid pixels in raster order."""
    if maps.shape[-2:] != valid.shape[-2:]:
        raise ValueError(f"map size {tuple(maps.shape[-2:])} does not match mask size "
                         f"{tuple(valid.shape[-2:])}; resize labels with resize_labels")
    return maps.float().permute(0, 2, 3, 1)[valid]


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of labels (B, H, W) int64 to (B, h, w)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


def kl_divergence(latent_mean: torch.Tensor, latent_logvar: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) averaged over channels x valid pixels.

    Args:
        latent_mean, latent_logvar: (B, C, h, w).
        valid: (B, h, w) bool, the pixels whose label is not 255 (on the same grid).
    """
    mean = _pixel_rows(latent_mean, valid)
    logvar = _pixel_rows(latent_logvar, valid)
    terms = 1.0 + logvar - mean.pow(2) - logvar.exp()
    return -0.5 * _mean(terms)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels (weighted mean with `class_weights`).

    Args:
        logits: (B, C, h, w) (or (N, C)); every logit takes part, including an extra one.
        labels: (B, h, w) (or (N,)) int64 on the same grid, `ignore_index` for ignored pixels.
        class_weights: optional (C,) per-class weights (ZS3Net weights unseen classes 100).

    Returns 0 (graph-connected) when every pixel is ignored.
    """
    if logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are on "
                         "different grids; resize labels with resize_labels")
    weight = None if class_weights is None else class_weights.float()
    total = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index,
                            reduction="sum")
    valid = labels != ignore_index
    if weight is None:
        denominator = valid.sum().float()
    else:
        denominator = weight[labels[valid]].sum()
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def multi_scale_classification_loss(logits_list: Sequence[torch.Tensor], labels: torch.Tensor,
                                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean over maps of `classification_loss`, labels (B, H, W) nearest-resized to each map.

    Args:
        logits_list: (B, C, h_i, w_i) per scale (three scales and their max in CaGNet).
    """
    terms = [classification_loss(logits, resize_labels(labels, logits.shape[-2:]), ignore_index)
             for logits in logits_list]
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- adversarial


class AdversarialLoss(NamedTuple):
    """One GAN objective on 1-D tensors of raw logits of the valid pixels."""

    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (real, fake)
    generator: Callable[[torch.Tensor], torch.Tensor]  # (fake)


def _l1_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return _mean(torch.sigmoid(fake).abs()) + _mean((torch.sigmoid(real) - 1).abs())


def _l1_generator(fake: torch.Tensor) -> torch.Tensor:
    return _mean((torch.sigmoid(fake) - 1).abs())


def _lsgan_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return _mean(torch.sigmoid(fake).pow(2)) + _mean((torch.sigmoid(real) - 1).pow(2))


def _lsgan_generator(fake: torch.Tensor) -> torch.Tensor:
    return _mean((torch.sigmoid(fake) - 1).pow(2))


def _gan_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # Binary cross-entropy with logits: BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x).
    return _mean(F.softplus(-real)) + _mean(F.softplus(fake))


def _gan_generator(fake: torch.Tensor) -> torch.Tensor:
    return _mean(F.softplus(-fake))  # non-saturating


def _wgan_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return _mean(fake) - _mean(real)


def _wgan_generator(fake: torch.Tensor) -> torch.Tensor:
    return -_mean(fake)


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    # The original's "lsgan": an L1 distance between the sigmoid score and the target.
    "l1": AdversarialLoss(_l1_discriminator, _l1_generator),
    "lsgan": AdversarialLoss(_lsgan_discriminator, _lsgan_generator),
    "gan": AdversarialLoss(_gan_discriminator, _gan_generator),
    # The gradient penalty needs the critic; the training step adds `gradient_penalty` itself.
    "wgan_gp": AdversarialLoss(_wgan_discriminator, _wgan_generator),
}


def _valid_logits(logit: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    values = logit.float()[:, 0]
    return values.flatten() if valid is None else values[valid]


def adversarial_discriminator_loss(kind: str, real_logit: torch.Tensor, fake_logit: torch.Tensor,
                                   valid: torch.Tensor | None) -> torch.Tensor:
    """Discriminator loss of `kind` (see `ADVERSARIAL_LOSSES`) over valid pixels.

    Args:
        real_logit, fake_logit: (B, 1, h, w) RAW adversarial logits (the caller detaches the
            features they come from). "l1" and "lsgan" apply the sigmoid here.
        valid: (B, h, w) bool, or None for every pixel. "wgan_gp" excludes the penalty.
    """
    loss = _lookup(ADVERSARIAL_LOSSES, kind, "adversarial loss")
    return loss.discriminator(_valid_logits(real_logit, valid), _valid_logits(fake_logit, valid))


def adversarial_generator_loss(kind: str, fake_logit: torch.Tensor,
                               valid: torch.Tensor | None) -> torch.Tensor:
    """Generator loss of `kind` on fake_logit (B, 1, h, w) RAW logits over valid (B, h, w)."""
    loss = _lookup(ADVERSARIAL_LOSSES, kind, "adversarial loss")
    return loss.generator(_valid_logits(fake_logit, valid))


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """WGAN-GP penalty `mean((||grad critic(x_hat)|| - 1)^2)` with pixels as samples (the
    training step weights it with `loss.gradient_penalty`, 10 in WGAN-GP).

    Args:
        critic: maps (N, F) pixel rows to (N,) or (N, 1) raw scores.
        real, fake: (N, F) valid pixel features (detached here); x_hat = a real + (1 - a) fake
            with a ~ U(0, 1) per row (drawn with `generator`, which must live on real's device).
    """
    real, fake = real.detach().float(), fake.detach().float()
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must match")
    if real.shape[0] == 0:
        return real.new_zeros(())
    alpha = torch.rand(real.shape[0], 1, device=real.device, generator=generator)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with _full_precision(real):
        scores = critic(mixed)
        (gradients,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    norms = torch.sqrt(gradients.pow(2).sum(dim=1) + 1e-12)
    return (norms - 1).pow(2).mean()


# ----------------------------------------------------------------------------- content


def _squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, F), (M, F) -> (N, M) squared Euclidean distances (clamped at 0)."""
    cross = x @ y.t()
    return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None] - 2 * cross).clamp(min=0)


def _mean_kernel(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    distances = _squared_distances(x, y)
    return sum(torch.exp(distances / (-2.0 * sigma)).mean() for sigma in sigmas)


def mmd(x: torch.Tensor, y: torch.Tensor,
        sigmas: Sequence[float] = DEFAULT_MMD_SIGMAS) -> torch.Tensor:
    """Square root of the biased multi-kernel MMD^2 between sample sets x (N, F) and y (M, F).

    Kernel k(a, b) = exp(-||a - b||^2 / (2 sigma)), MMD^2 summed over `sigmas`; 0 when the
    estimate is not positive, with a finite (zero) gradient there. (The original's
    centred-weight formula equals half of this MMD^2 when N == M: `MMD_ESTIMATORS`.)
    """
    x, y = x.float(), y.float()
    if x.shape[0] == 0 or y.shape[0] == 0:
        return x.sum() * 0 + y.sum() * 0
    with _full_precision(x):
        squared = (_mean_kernel(x, x, sigmas) + _mean_kernel(y, y, sigmas)
                   - 2 * _mean_kernel(x, y, sigmas))
    root = torch.sqrt(squared.clamp(min=1e-12))
    return torch.where(squared > 0, root, torch.zeros_like(root))


def class_mmd_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                   sigmas: Sequence[float] = DEFAULT_MMD_SIGMAS,
                   max_pixels_per_class: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean over the classes present of `mmd(fake[c], real[c])`.

    Args:
        fake, real: (N, F) paired pixel features (row i of both belongs to pixel i).
        labels: (N,) class of each pixel.
        max_pixels_per_class: if set, a random subset of that many pixels per class (the same
            rows of fake and real) bounds the (n x n) kernel matrices' memory.
        generator: torch generator for the subsampling.
    """
    if labels.numel() == 0:
        return fake.float().sum() * 0 + real.float().sum() * 0
    terms = []
    for class_id in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == class_id).squeeze(1)
        if max_pixels_per_class is not None and rows.numel() > max_pixels_per_class:
            device = generator.device if generator is not None else rows.device
            order = torch.randperm(rows.numel(), generator=generator, device=device)
            rows = rows[order[:max_pixels_per_class].to(rows.device)]
        terms.append(mmd(fake[rows], real[rows], sigmas))
    return torch.stack(terms).mean()


def _run_mmd_squared(fake: torch.Tensor, real: torch.Tensor, sigmas: Sequence[float]
                     ) -> torch.Tensor:
    """Biased multi-kernel MMD^2 of R paired runs of equal length: (R, L, F) x2 -> (R,)."""
    def mean_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distances = (x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :]
                     - 2 * torch.bmm(x, y.transpose(1, 2))).clamp(min=0)
        return sum(torch.exp(distances / (-2.0 * sigma)).mean(dim=(1, 2)) for sigma in sigmas)

    return mean_kernel(fake, fake) + mean_kernel(real, real) - 2 * mean_kernel(fake, real)


def raster_run_mmd_loss(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                        sigmas: Sequence[float] = DEFAULT_MMD_SIGMAS, scale: float = 1.0
                        ) -> torch.Tensor:
    """The original's grouping: the mean over maximal runs of identical label of the run's
    `sqrt(scale * MMD^2)` (0 where not positive). The original's centred weight matrix gives
    half of the biased MMD^2 for paired runs: `scale=0.5` reproduces its value. Runs of equal
    length are computed together (batched matmuls), not pixel by pixel.

    Args:
        fake, real: (N, F) valid pixels in raster order (batch -> row -> column).
        labels: (N,) their labels; a run may cross rows and images, as in the original.
    """
    if labels.numel() == 0:
        return fake.float().sum() * 0 + real.float().sum() * 0
    fake, real = fake.float(), real.float()
    changes = (labels[1:] != labels[:-1]).long()
    run_ids = torch.cat([changes.new_zeros(1), changes.cumsum(0)])
    lengths = torch.bincount(run_ids)
    starts = torch.cumsum(lengths, 0) - lengths
    squared = fake.new_zeros(len(lengths))
    with _full_precision(fake):
        for length in torch.unique(lengths).tolist():
            runs = torch.nonzero(lengths == length).squeeze(1)
            rows = starts[runs][:, None] + torch.arange(length, device=labels.device)[None]
            squared = squared.index_put((runs,), _run_mmd_squared(fake[rows], real[rows],
                                                                  sigmas))
    squared = scale * squared
    roots = torch.sqrt(squared.clamp(min=1e-12))
    return torch.where(squared > 0, roots, torch.zeros_like(roots)).mean()


MMD_GROUPINGS = {"class": class_mmd_loss, "raster_runs": raster_run_mmd_loss}
# The MMD^2 estimator: the textbook biased one, or the original's weight matrix (half of it).
MMD_ESTIMATORS = {"biased": 1.0, "original": 0.5}


def _mmd_content(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                 sigmas: Sequence[float], grouping: str, max_pixels_per_class: int | None,
                 generator: torch.Generator | None, scale: float) -> torch.Tensor:
    if grouping == "raster_runs":  # the original's grouping never subsamples
        return raster_run_mmd_loss(fake, real, labels, sigmas, scale)
    if scale != 1.0:
        return class_mmd_loss(fake, real, labels, sigmas, max_pixels_per_class, generator) \
            * scale ** 0.5
    return class_mmd_loss(fake, real, labels, sigmas, max_pixels_per_class, generator)


def _l1_content(fake: torch.Tensor, real: torch.Tensor, *unused) -> torch.Tensor:
    return _mean((fake - real).abs())


def _mse_content(fake: torch.Tensor, real: torch.Tensor, *unused) -> torch.Tensor:
    return _mean((fake - real).pow(2))


# Each takes (fake (N, F), real (N, F), labels (N,), sigmas, grouping, max_pixels_per_class,
# generator, MMD^2 scale) on the valid pixels.
CONTENT_LOSSES = {"mmd": _mmd_content, "l1": _l1_content, "mse": _mse_content}


def content_loss(kind: str, fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                 sigmas: Sequence[float] = DEFAULT_MMD_SIGMAS, grouping: str = "class",
                 max_pixels_per_class: int | None = None,
                 generator: torch.Generator | None = None, estimator: str = "biased",
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Reconstruction loss between generated and real features on the valid pixels.

    Args:
        kind: "mmd" (grouped per `grouping`: "class" or "raster_runs"), "l1" or "mse" (means
            over valid pixels x channels).
        fake, real: (B, F, h, w) generated and (detached by the caller) real features.
        labels: (B, h, w) labels on the same grid; `ignore_index` pixels are dropped first.
        max_pixels_per_class, generator: see `class_mmd_loss` ("class" grouping only).
        estimator: "biased" MMD^2, or the original's "original" (half of it, `MMD_ESTIMATORS`).

    Returns 0 (graph-connected) when no pixel is valid.
    """
    function = _lookup(CONTENT_LOSSES, kind, "content loss")
    _lookup(MMD_GROUPINGS, grouping, "MMD grouping")
    scale = _lookup(MMD_ESTIMATORS, estimator, "MMD estimator")
    valid = labels != ignore_index
    fake_rows, real_rows = _pixel_rows(fake, valid), _pixel_rows(real, valid)
    return function(fake_rows, real_rows, labels[valid], tuple(sigmas), grouping,
                    max_pixels_per_class, generator, scale)
