"""The two training steps of CaGNet, each composed from the model and the pure loss functions.

Step 1 (`feature_generation_step`) runs the backbone once at every training scale and backs
each total loss into its own module with `backward(inputs=...)`:

- discriminator: `adv * L_gan_D + cls_real * L_cls_real + cls_fake * L_cls_fake`
- generator:     `adv * L_gan_G + content * L_content + cls_fake * L_cls_fake`
- backbone:      `kl * KL + cls_real * L_cls_real` (skipped when the backbone is frozen)

Update order (documented, as method.md §2 asks): every gradient is taken at the *current*
weights, then the three optimisers step together. The original steps the discriminator first and
then back-propagates the generator and backbone losses through the already-updated
discriminator (PyTorch 1.4 semantics); doing that here would need a second discriminator forward
per loss, and the backbone forward is never run twice. The generator's input
`[embedding(label), z]` is detached, so no generator loss reaches the backbone. With the backbone
frozen (finetune phase) the backbone and contextual module run under `no_grad`: no graph, no
backward through them.

Step 2 (`classifier_step`) never touches the backbone: it samples a label map of the feature
grid's size over seen + unseen classes, generates features from N(0, I) latents and trains the
classifier on them.

Mixed precision: the forward runs in the caller's autocast context; every loss term is computed
from fp32 copies outside it (KL, CE reductions, MMD and the gradient penalty in fp32). One
`GradScaler` (enabled for fp16 only; a pass-through otherwise) scales each of the three totals
before its backward, `scaler.step` steps each optimiser that received gradients (it skips one
whose gradients hold an Inf/NaN) and `scaler.update()` runs exactly once per iteration that
reached the backward pass. An iteration whose loss is non-finite is skipped before any backward,
leaving the scaler untouched.

Several processes (`sync`, see cagnet/utils/distributed.py): the tensors the losses read are
gathered from every rank, so each rank computes the loss of the whole global batch; gradients
are summed across ranks right before each optimiser steps (after the scaled backward, so every
rank sees the same Inf/NaN and the scaler stays identical everywhere).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from cagnet import losses
from cagnet.config import LossConfig
from cagnet.engine.optim import Optimizers
from cagnet.utils.distributed import LOCAL, BatchSync

IGNORE_INDEX = 255
Update = tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]


@dataclass
class StepContext:
    """How a step runs: the device, a zero-argument factory of the forward's autocast context,
    the run's GradScaler (fp16; None = a pass-through) and the collectives of a multi-process
    run (`LOCAL` in a single process)."""

    device: torch.device
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    sync: BatchSync = LOCAL

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)


@dataclass
class LabelDraw:
    """What a step-2 iteration generates from: `batch_size` (the GLOBAL batch) label maps of
    `grid_size` (h, w), per-pixel classes over seen + unseen with weight 1 per seen and
    1 + `unseen_rate` per unseen class, drawn (with the latents) from `generator`."""

    batch_size: int
    grid_size: tuple[int, int]
    unseen_rate: float
    generator: torch.Generator


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def _backward(total: torch.Tensor, parameters: list[torch.nn.Parameter], retain: bool,
              scaler: torch.amp.GradScaler) -> bool:
    """Back-propagate the (scaled) total into `parameters` only; False when nothing to do."""
    if parameters and total.requires_grad:
        scaler.scale(total).backward(inputs=parameters, retain_graph=retain)
        return True
    return False


def _apply_updates(updates: list[Update], scaler: torch.amp.GradScaler, sync: BatchSync,
                   update_scale: bool = True, stepped_before: bool = False) -> dict[str, float]:
    """Sum each optimiser's gradients across ranks, step it through the scaler, then (unless
    more steps follow in this iteration) one `scaler.update()` when anything stepped in the
    iteration. Returns the scale and whether it dropped (an fp16 overflow skipped steps) when
    the scaler is enabled."""
    for optimizer, parameters in updates:
        sync.reduce_gradients(parameters)
        scaler.step(optimizer)
    if not update_scale or not (updates or stepped_before) or not scaler.is_enabled():
        return {}
    before = scaler.get_scale()
    scaler.update()
    after = scaler.get_scale()
    return {"grad_scale": after, "grad_overflow": float(after < before)}


def _as_floats(values: dict[str, torch.Tensor]) -> tuple[dict[str, float], bool]:
    """Scalar tensors -> floats with one device-to-host copy; also whether all are finite."""
    if not values:
        return {}, True
    stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()])
    numbers = stacked.tolist()
    finite = all(math.isfinite(number) for number in numbers)
    return dict(zip(values, numbers)), finite


def feature_generation_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            optimizers: Optimizers, loss: LossConfig, context: StepContext,
                            train_backbone: bool = True) -> dict[str, float]:
    """One step-1 iteration.

    Args:
        model: a `CaGNet` in train mode.
        images: (b, 3, H, W) mean-subtracted BGR crops (b = this rank's share of the batch).
        labels: (b, H, W) int64 training labels: seen classes 0..S-1, everything else 255.
        optimizers: the optimisers; `optimizers.backbone` is used only when `train_backbone`.
        loss: kinds and coefficients.
        context: device, autocast, GradScaler and collectives.
        train_backbone: False in the finetune phase (backbone frozen, run without a graph).

    Returns:
        Every raw loss term of the global batch as a float, plus `skipped` = 1.0 when a
        non-finite term made the step skip its update (the weights are then unchanged).
    """
    scaler, sync = context.scaler, context.sync
    optimizers.zero_grad()
    with context.autocast():
        with torch.set_grad_enabled(train_backbone):
            output = model.multi_scale_features(images, sample_latent=True)
        grid_labels = losses.resize_labels(labels, output.scale1.feature.shape[-2:])
        real_outputs = [model.discriminator(feature) for feature in output.features]
        latent = output.scale1.latent.detach()
        if model.generator_latent == "noise":  # the ablation: no context in the latent
            latent = torch.randn_like(latent)
        fake = model.generate(grid_labels, latent)
        fake_output = model.discriminator(fake)
    terms = step1_terms(model, output, real_outputs, fake, fake_output, labels, grid_labels,
                         loss, train_backbone, sync)
    totals = _step1_totals(terms, loss, train_backbone)
    numbers, finite = _as_floats({**terms, **totals})  # one device-to-host copy
    if not sync.all_true(finite, images.device):
        optimizers.zero_grad()
        return {**{name: numbers[name] for name in terms}, "skipped": 1.0}

    discriminator_parameters = _trainable(model.discriminator)
    updates: list[Update] = []
    if _backward(totals["loss_discriminator"], discriminator_parameters, True, scaler):
        updates.append((optimizers.discriminator, discriminator_parameters))
    stepped = False
    if loss.update_order == "original":
        # The original steps the discriminator, then back-propagates the generator and
        # backbone losses through the UPDATED discriminator: a second pass of the (small)
        # discriminator, never of the backbone; its dropout draws new masks, as there.
        _apply_updates(updates, scaler, sync, update_scale=False)
        stepped, updates = bool(updates), []
        with context.autocast():
            real_outputs = [model.discriminator(feature) for feature in output.features]
            fake_output = model.discriminator(fake)
        terms = {**terms, **step1_terms(model, output, real_outputs, fake, fake_output, labels,
                                         grid_labels, loss, train_backbone, sync,
                                         only_discriminator_terms=True)}
        totals = _step1_totals(terms, loss, train_backbone)
        second, finite = _as_floats({key: totals[key] for key in totals
                                     if key != "loss_discriminator"})
        numbers.update(second)
        if not sync.all_true(finite, images.device):  # the discriminator has stepped
            optimizers.zero_grad()
            return {**numbers, **_apply_updates([], scaler, sync, stepped_before=stepped),
                    "skipped": 1.0}
    generator_parameters = _trainable(model.generator)
    if _backward(totals["loss_generator"], generator_parameters, train_backbone, scaler):
        updates.append((optimizers.generator, generator_parameters))
    if train_backbone:
        backbone_parameters = _trainable(model.backbone) + _trainable(model.context)
        if _backward(totals["loss_backbone"], backbone_parameters, False, scaler):
            updates.append((optimizers.backbone, backbone_parameters))
    return {**numbers, **_apply_updates(updates, scaler, sync, stepped_before=stepped),
            "skipped": 0.0}


def _step1_totals(terms: dict[str, torch.Tensor], loss: LossConfig,
                  train_backbone: bool) -> dict[str, torch.Tensor]:
    """The three weighted totals of a step-1 iteration (every coefficient is applied here)."""
    zero = terms["cls_real"].new_zeros(())
    totals = {
        "loss_discriminator": loss.discriminator_adversarial * terms["gan_d"]
        + loss.discriminator_cls_real * terms["cls_real"]
        + loss.discriminator_cls_fake * terms.get("cls_fake", zero)
        + loss.gradient_penalty * terms.get("gradient_penalty", zero),
        "loss_generator": loss.generator_adversarial * terms["gan_g"]
        + loss.generator_content * terms["content"]
        + loss.generator_cls_fake * terms.get("cls_fake", zero),
    }
    if train_backbone:
        totals["loss_backbone"] = loss.kl * terms["kl"] + loss.backbone_cls_real * terms["cls_real"]
    return totals


def step1_terms(model: torch.nn.Module, output, real_outputs: list, fake: torch.Tensor,
                 fake_output, labels: torch.Tensor, grid_labels: torch.Tensor, loss: LossConfig,
                 train_backbone: bool, sync: BatchSync, only_discriminator_terms: bool = False
                 ) -> dict[str, torch.Tensor]:
    """The raw step-1 terms (fp32 scalars) over the global batch: every tensor a loss reads is
    gathered from all ranks (the identity in one process). `only_discriminator_terms`: just
    the ones read through the discriminator by the generator and backbone totals.

    Args:
        output: the model's `MultiScaleOutput`; real_outputs / fake_output: discriminator
            outputs of its feature maps and of `fake` (b, F, h, w).
        labels: (b, H, W) crop labels; grid_labels: (b, h, w) on the scale-1 feature grid.
    """
    gather = sync.gather
    all_grid_labels = gather(grid_labels)
    valid = all_grid_labels != IGNORE_INDEX
    fake_adversarial = gather(fake_output.adversarial_logit).float()
    terms: dict[str, torch.Tensor] = {}
    terms["cls_real"] = losses.multi_scale_classification_loss(
        [gather(out.class_logits).float() for out in real_outputs], gather(labels))
    if not only_discriminator_terms:
        terms["gan_d"] = losses.adversarial_discriminator_loss(
            loss.adversarial, gather(real_outputs[0].adversarial_logit).float(),
            fake_adversarial, valid)
    terms["gan_g"] = losses.adversarial_generator_loss(loss.adversarial, fake_adversarial, valid)
    cls_fake = loss.discriminator_cls_fake or loss.generator_cls_fake
    if only_discriminator_terms:
        if cls_fake:
            terms["cls_fake"] = losses.classification_loss(
                gather(fake_output.class_logits).float(), all_grid_labels)
        return terms
    terms["content"] = losses.content_loss(
        loss.content, gather(fake).float(), gather(output.scale1.feature.detach()).float(),
        all_grid_labels, sigmas=loss.mmd_sigmas, grouping=loss.mmd_grouping,
        max_pixels_per_class=loss.mmd_max_pixels_per_class or None,
        estimator=loss.mmd_estimator)
    if cls_fake:
        terms["cls_fake"] = losses.classification_loss(
            gather(fake_output.class_logits).float(), all_grid_labels)
    if loss.adversarial == "wgan_gp":
        local_valid = grid_labels != IGNORE_INDEX
        penalty = _wgan_gradient_penalty(model, output.scale1.feature, fake, local_valid)
        terms["gradient_penalty"] = sync.mean_share(penalty, int(local_valid.sum()))
    if train_backbone:
        terms["kl"] = losses.kl_divergence(gather(output.scale1.latent_mean).float(),
                                           gather(output.scale1.latent_logvar).float(), valid)
    return terms


def _wgan_gradient_penalty(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                           valid: torch.Tensor) -> torch.Tensor:
    """Unweighted WGAN-GP penalty on valid pixels; the critic is the discriminator's
    adversarial head."""
    real_pixels = real.detach().permute(0, 2, 3, 1)[valid].float()
    fake_pixels = fake.detach().permute(0, 2, 3, 1)[valid].float()
    if real_pixels.shape[0] == 0:
        return real.new_zeros(()).float()
    discriminator = model.discriminator

    def critic(pixels: torch.Tensor) -> torch.Tensor:
        maps = pixels[:, :, None, None]
        return discriminator.adversarial_logit(discriminator.trunk(maps)).flatten()

    return losses.gradient_penalty(critic, real_pixels, fake_pixels)


def sample_step2_labels(batch_size: int, height: int, width: int, num_seen: int, num_unseen: int,
                        unseen_rate: float, generator: torch.Generator) -> torch.Tensor:
    """(B, h, w) int64 labels drawn i.i.d. per pixel over seen + unseen classes: each seen class
    has weight 1 and each unseen class weight 1 + `unseen_rate` (method.md §3.2)."""
    weights = torch.ones(num_seen + num_unseen, dtype=torch.float64)
    weights[num_seen:] += unseen_rate
    draws = torch.multinomial(weights, batch_size * height * width, replacement=True,
                              generator=generator)
    return draws.view(batch_size, height, width)


def _latent_noise(shape: tuple[int, ...], generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """N(0, I) latents of `shape` from `generator` (CPU). On a GPU they are drawn there from a
    device generator seeded by `generator`: drawing (8, 600, 47, 47) normals on the CPU takes
    ~50 ms, far longer than the GPU's whole step 2."""
    if device.type != "cuda":
        return torch.randn(shape, generator=generator)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    device_generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=device_generator, device=device)


def _keep_mask(like: torch.Tensor, keep: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask equal to `torch.empty_like(like).bernoulli_(keep, generator=...)` on the CPU,
    from the same draws: torch's portable kernel takes one 64-bit draw per element (in memory
    order) and keeps it when its low 53 bits, as a double in [0, 1), are < keep. Drawing the
    bits with `random_` and comparing them as integers is ~3x faster than its per-element
    loop."""
    bits = torch.empty_like(like, dtype=torch.int64).random_(generator=generator)
    return bits.bitwise_and_(2 ** 53 - 1) < math.ceil(keep * 2 ** 53)


@functools.lru_cache(maxsize=None)
def _bernoulli_is_portable() -> bool:
    """Whether this torch's CPU `bernoulli_` is the kernel `_keep_mask` reproduces (with MKL on
    an Intel CPU it is another one, already fast)."""
    generator = torch.Generator().manual_seed(0)
    expected = torch.empty(1024).bernoulli_(0.5, generator=generator).bool()
    return torch.equal(_keep_mask(expected, 0.5, generator.manual_seed(0)), expected)


def _dropout(x: torch.Tensor, dropout: torch.nn.Dropout) -> torch.Tensor:
    """`dropout(x)` to the bit, from the same global-generator draws (its ops: x * (mask /
    keep)); on the CPU the mask comes from `_keep_mask` (the per-element `bernoulli_` took
    half of a step-2 iteration). In place when `x` needs no gradient."""
    keep = 1.0 - dropout.p
    if (not dropout.training or keep in (0.0, 1.0) or x.device.type != "cpu"
            or not _bernoulli_is_portable()):
        return dropout(x)
    noise = _keep_mask(x, keep).to(x.dtype).div_(keep)
    return x * noise if x.requires_grad else x.mul_(noise)


def _generate(model: torch.nn.Module, labels: torch.Tensor, latent: torch.Tensor
              ) -> torch.Tensor:
    """`model.generate(labels, latent)`: labels (B, h, w) in 0..K-1 and latent (B, L, h, w) ->
    fake features (B, F, h, w). The first 1x1 conv's class-embedding half is applied to the K
    embeddings once and gathered per pixel, instead of to a (B, E, h, w) condition map
    concatenated with the latent (half that layer's FLOPs)."""
    generator = model.generator
    convs = [layer.conv for layer in generator.hidden_layers] + [generator.output]
    embed_dim = model.class_embeddings.shape[1]
    first = convs[0]
    per_class = torch.addmm(first.bias[:, None], first.weight[:, :embed_dim].flatten(1),
                            model.class_embeddings.t())  # (C, K)
    per_pixel = per_class.index_select(1, labels.flatten()).view(-1, *labels.shape)
    x = torch.nn.functional.conv2d(latent, first.weight[:, embed_dim:])
    x = x + per_pixel.transpose(0, 1)  # (B, C, h, w)
    for layer, conv in zip(generator.hidden_layers, convs[1:]):
        x = conv(_dropout(layer.activation(x), layer.dropout))
    return torch.sigmoid(x)


def _class_logits(discriminator: torch.nn.Module, feature: torch.Tensor) -> torch.Tensor:
    """`discriminator(feature).class_logits` (B, K [+ 1], h, w), without the adversarial head
    that step 2 never reads."""
    trunk = discriminator.trunk
    return discriminator.classifier(_dropout(trunk.activation(trunk.conv(feature)),
                                             trunk.dropout))


def classifier_step(model: torch.nn.Module, optimizers: Optimizers, loss: LossConfig,
                    draw: LabelDraw, context: StepContext) -> dict[str, float]:
    """One step-2 iteration: generated features of seen + unseen classes train the classifier
    (discriminator trunk + cls head); the generator only trains when its step-2 coefficient is
    non-zero (COCO). No image and no backbone are involved. Every rank draws the same
    (B, h, w) labels and (B, E, h, w) latents (its generator is seeded identically) and
    generates its slice. The forward is `model.generate` then the discriminator's class
    logits, without their waste (`_generate`, `_class_logits`, `_dropout`): the same numbers
    from the same random draws (tests/test_step2.py)."""
    scaler, sync, device = context.scaler, context.sync, context.device
    optimizers.zero_grad()
    height, width = draw.grid_size
    all_labels = sample_step2_labels(draw.batch_size, height, width, model.num_seen,
                                     model.num_unseen, draw.unseen_rate, draw.generator)
    noise = _latent_noise((draw.batch_size, model.generator.latent_dim, height, width),
                          draw.generator, device)
    labels = sync.local_part(all_labels).to(device)
    noise = sync.local_part(noise).to(device)
    train_generator = loss.step2_generator_cls_fake != 0
    with context.autocast():
        with torch.set_grad_enabled(train_generator):
            fake = _generate(model, labels, noise)
        logits = _class_logits(model.discriminator, fake)
    cls_fake = losses.classification_loss(sync.gather(logits).float(), all_labels.to(device))
    results, finite = _as_floats({"step2_cls_fake": cls_fake})
    if not sync.all_true(finite, device):
        optimizers.zero_grad()
        return {**results, "skipped": 1.0}
    updates: list[Update] = []
    discriminator_parameters = _trainable(model.discriminator)
    if _backward(loss.step2_discriminator_cls_fake * cls_fake, discriminator_parameters,
                 train_generator, scaler):
        updates.append((optimizers.discriminator, discriminator_parameters))
    generator_parameters = _trainable(model.generator)
    if train_generator and _backward(loss.step2_generator_cls_fake * cls_fake,
                                     generator_parameters, False, scaler):
        updates.append((optimizers.generator, generator_parameters))
    results.update(_apply_updates(updates, scaler, sync))
    results["skipped"] = 0.0
    return results


def zero_gradient_steps(model: torch.nn.Module, optimizers: Optimizers,
                        generator_trained: bool) -> None:
    """The original release's step 2 also steps the parameters its loss does not reach, with
    zero gradients: the discriminator's adversarial head and (when its step-2 coefficient is 0)
    the generator. Adam still moves them (its momentum and weight decay); this reproduces that
    after a `classifier_step` (`train.step2_zero_gradient_steps`)."""
    optimizers.zero_grad()
    updates = [(optimizers.discriminator, list(model.discriminator.adversarial_head.parameters()))]
    if not generator_trained:
        updates.append((optimizers.generator, _trainable(model.generator)))
    for optimizer, parameters in updates:
        for parameter in parameters:
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    optimizers.zero_grad()
