"""CaGNet's loss terms (method.md §1.2.7, §2): fp32 scalars, graph-connected even when 0.

No coefficient is applied here: weights belong to the config and the training step applies
each one once. Label 255 is ignored everywhere."""

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
    """Autocast off: the matmuls of delicate terms (MMD, gradient penalty) run in fp32."""
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
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def kl_divergence(latent_mean: torch.Tensor, latent_logvar: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) of (B, C, h, w) maps over the valid (B, h, w) pixels."""
    mean, logvar = _pixel_rows(latent_mean, valid), _pixel_rows(latent_logvar, valid)
    return -0.5 * _mean(1.0 + logvar - mean.pow(2) - logvar.exp())


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX,
                        class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of (B, C, h, w) or (N, C) logits over non-ignored labels (weighted mean)."""
    if logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are on "
                         "different grids; resize labels with resize_labels")
    weight = None if class_weights is None else class_weights.float()
    total = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index,
                            reduction="sum")
    valid = labels != ignore_index
    denominator = valid.sum().float() if weight is None else weight[labels[valid]].sum()
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def multi_scale_classification_loss(logits_list: Sequence[torch.Tensor], labels: torch.Tensor,
                                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean of `classification_loss` over maps (B, C, h_i, w_i), labels (B, H, W) resized."""
    terms = [classification_loss(logits, resize_labels(labels, logits.shape[-2:]), ignore_index)
             for logits in logits_list]
    return torch.stack(terms).mean()


class AdversarialLoss(NamedTuple):
    """One GAN objective on 1-D tensors of raw logits of the valid pixels."""

    discriminator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (real, fake)
    generator: Callable[[torch.Tensor], torch.Tensor]  # (fake)


def _sigmoid_distance(distance: Callable[[torch.Tensor], torch.Tensor]) -> AdversarialLoss:
    """The distance of the sigmoid score to its target: 1 for real, 0 for fake."""
    return AdversarialLoss(
        lambda real, fake: (_mean(distance(torch.sigmoid(fake)))
                            + _mean(distance(torch.sigmoid(real) - 1))),
        lambda fake: _mean(distance(torch.sigmoid(fake) - 1)))


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    "l1": _sigmoid_distance(torch.abs),  # what the original calls "lsgan"
    "lsgan": _sigmoid_distance(lambda difference: difference.pow(2)),
    # BCE with logits: BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x); non-saturating G.
    "gan": AdversarialLoss(lambda real, fake: _mean(F.softplus(-real)) + _mean(F.softplus(fake)),
                           lambda fake: _mean(F.softplus(-fake))),
    # The training step adds `gradient_penalty` itself (it needs the critic).
    "wgan_gp": AdversarialLoss(lambda real, fake: _mean(fake) - _mean(real),
                               lambda fake: -_mean(fake)),
}


def _valid_logits(logit: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    values = logit.float()[:, 0]
    return values.flatten() if valid is None else values[valid]


def adversarial_discriminator_loss(kind: str, real_logit: torch.Tensor, fake_logit: torch.Tensor,
                                   valid: torch.Tensor | None) -> torch.Tensor:
    """Discriminator loss of `kind` on RAW logits (B, 1, h, w) over valid (B, h, w) pixels."""
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
    """WGAN-GP `mean((||grad critic(x_hat)|| - 1)^2)` over (N, F) pixel rows."""
    real, fake = real.detach().float(), fake.detach().float()
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must match")
    if real.shape[0] == 0:
        return real.new_zeros(())
    alpha = torch.rand(real.shape[0], 1, device=real.device, generator=generator)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with _full_precision(real):
        (gradients,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
    return (torch.sqrt(gradients.pow(2).sum(dim=1) + 1e-12) - 1).pow(2).mean()


def _mean_kernel(x: torch.Tensor, y: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    cross = x @ y.t()
    distances = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None] - 2 * cross).clamp(min=0)
    return sum(torch.exp(distances / (-2.0 * sigma)).mean() for sigma in sigmas)


def mmd(x: torch.Tensor, y: torch.Tensor,
        sigmas: Sequence[float] = DEFAULT_MMD_SIGMAS) -> torch.Tensor:
    """sqrt of the biased multi-kernel MMD^2 of x (N, F), y (M, F); 0 when not positive."""
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
    """Mean over classes of `mmd(fake[c], real[c])` on paired (N, F) rows (subsampled)."""
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
    """The original's grouping: mean `sqrt(scale * MMD^2)` over runs of one label (raster order)."""
    if labels.numel() == 0:
        return fake.float().sum() * 0 + real.float().sum() * 0
    fake, real = fake.float(), real.float()
    changes = (labels[1:] != labels[:-1]).long()
    lengths = torch.bincount(torch.cat([changes.new_zeros(1), changes.cumsum(0)]))
    starts = torch.cumsum(lengths, 0) - lengths
    squared = fake.new_zeros(len(lengths))
    with _full_precision(fake):
        for length in torch.unique(lengths).tolist():
            runs = torch.nonzero(lengths == length).squeeze(1)
            rows = starts[runs][:, None] + torch.arange(length, device=labels.device)[None]
            squared = squared.index_put((runs,), _run_mmd_squared(fake[rows], real[rows], sigmas))
    squared = scale * squared
    roots = torch.sqrt(squared.clamp(min=1e-12))
    return torch.where(squared > 0, roots, torch.zeros_like(roots)).mean()


MMD_GROUPINGS = {"class": class_mmd_loss, "raster_runs": raster_run_mmd_loss}
# The MMD^2 estimator: the textbook biased one, or the original's centred weight matrix, which
# gives half of it for paired runs of equal length.
MMD_ESTIMATORS = {"biased": 1.0, "original": 0.5}


def _mmd_content(fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                 sigmas: Sequence[float], grouping: str, max_pixels_per_class: int | None,
                 generator: torch.Generator | None, scale: float) -> torch.Tensor:
    if grouping == "raster_runs":  # the original's grouping never subsamples
        return raster_run_mmd_loss(fake, real, labels, sigmas, scale)
    loss = class_mmd_loss(fake, real, labels, sigmas, max_pixels_per_class, generator)
    return loss * scale ** 0.5 if scale != 1.0 else loss


# Each takes (fake (N, F), real (N, F), labels (N,), sigmas, grouping, max_pixels_per_class,
# generator, MMD^2 scale) on the valid pixels.
CONTENT_LOSSES = {"mmd": _mmd_content,
                  "l1": lambda fake, real, *unused: _mean((fake - real).abs()),
                  "mse": lambda fake, real, *unused: _mean((fake - real).pow(2))}


def content_loss(kind: str, fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor,
                 sigmas: Sequence[float] = DEFAULT_MMD_SIGMAS, grouping: str = "class",
                 max_pixels_per_class: int | None = None,
                 generator: torch.Generator | None = None, estimator: str = "biased",
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Reconstruction loss of `kind` between (B, F, h, w) features on non-ignored pixels."""
    function = _lookup(CONTENT_LOSSES, kind, "content loss")
    _lookup(MMD_GROUPINGS, grouping, "MMD grouping")
    scale = _lookup(MMD_ESTIMATORS, estimator, "MMD estimator")
    valid = labels != ignore_index
    fake_rows, real_rows = _pixel_rows(fake, valid), _pixel_rows(real, valid)
    return function(fake_rows, real_rows, labels[valid], tuple(sigmas), grouping,
                    max_pixels_per_class, generator, scale)
