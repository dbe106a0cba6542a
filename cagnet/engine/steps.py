"""CaGNet's two training steps from the model and the pure losses (method.md §2); a non-finite
loss skips the update; under torchrun every rank computes the loss of the global batch."""

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch

from cagnet import losses
from cagnet.config import LossConfig
from cagnet.engine.optim import Optimizers
from cagnet.utils.distributed import LOCAL, BatchSync

Update = tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]


@dataclass
class StepContext:
    """Device, autocast factory, GradScaler (None: a pass-through) and collectives of a step."""

    device: torch.device
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    sync: BatchSync = LOCAL

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)


@dataclass
class LabelDraw:
    """A step-2 draw: `batch_size` (global) label maps of `grid_size` (h, w) from `generator`."""

    batch_size: int
    grid_size: tuple[int, int]
    unseen_rate: float
    generator: torch.Generator
    excluded: tuple[int, ...] = ()  # classes never drawn (few-shot: those learned from shots)


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def _backward(updates: list[Update], optimizer: torch.optim.Optimizer,
              parameters: list[torch.nn.Parameter], total: torch.Tensor, retain: bool,
              scaler: torch.amp.GradScaler) -> None:
    """Back-propagate the (scaled) total into `parameters` only; if it did, queue the update."""
    if parameters and total.requires_grad:
        scaler.scale(total).backward(inputs=parameters, retain_graph=retain)
        updates.append((optimizer, parameters))


def _apply_updates(updates: list[Update], scaler: torch.amp.GradScaler, sync: BatchSync,
                   update_scale: bool = True, stepped_before: bool = False) -> dict[str, float]:
    """Sum gradients across ranks and step; with `update_scale`, update the fp16 scale."""
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
    stacked = torch.stack([value.detach().float().reshape(()) for value in values.values()])
    numbers = stacked.tolist()
    return dict(zip(values, numbers)), all(math.isfinite(number) for number in numbers)


def feature_generation_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            optimizers: Optimizers, loss: LossConfig, context: StepContext,
                            train_backbone: bool = True) -> dict[str, float]:
    """One step-1 iteration on this rank's images (b, 3, H, W) and labels (b, H, W); without
    `train_backbone` the backbone is frozen (no graph). Gradients are taken at the current weights
    (see `loss.update_order`). Returns the global batch's raw terms and `skipped` (1.0: none)."""
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
    updates: list[Update] = []
    _backward(updates, optimizers.discriminator, _trainable(model.discriminator),
              totals["loss_discriminator"], True, scaler)
    stepped = False
    if loss.update_order == "original":
        # As the original: step the discriminator, then back-propagate the other losses through
        # the UPDATED one (a second pass of it, not of the backbone; new dropout masks).
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
    _backward(updates, optimizers.generator, _trainable(model.generator),
              totals["loss_generator"], train_backbone, scaler)
    if train_backbone:
        backbone_parameters = _trainable(model.backbone) + _trainable(model.context)
        _backward(updates, optimizers.backbone, backbone_parameters, totals["loss_backbone"],
                  False, scaler)
    return {**numbers, **_apply_updates(updates, scaler, sync, stepped_before=stepped),
            "skipped": 0.0}


def _step1_totals(terms: dict[str, torch.Tensor], loss: LossConfig,
                  train_backbone: bool) -> dict[str, torch.Tensor]:
    """The three weighted totals of a step-1 iteration (every coefficient is applied here)."""
    zero = terms["cls_real"].new_zeros(())
    totals = {"loss_discriminator": loss.discriminator_adversarial * terms["gan_d"]
              + loss.discriminator_cls_real * terms["cls_real"]
              + loss.discriminator_cls_fake * terms.get("cls_fake", zero)
              + loss.gradient_penalty * terms.get("gradient_penalty", zero),
              "loss_generator": loss.generator_adversarial * terms["gan_g"]
              + loss.generator_content * terms["content"]
              + loss.generator_cls_fake * terms.get("cls_fake", zero)}
    if train_backbone:
        totals["loss_backbone"] = loss.kl * terms["kl"] + loss.backbone_cls_real * terms["cls_real"]
    return totals


def step1_terms(model: torch.nn.Module, output, real_outputs: list, fake: torch.Tensor,
                 fake_output, labels: torch.Tensor, grid_labels: torch.Tensor, loss: LossConfig,
                 train_backbone: bool, sync: BatchSync, only_discriminator_terms: bool = False
                 ) -> dict[str, torch.Tensor]:
    """The raw step-1 terms (fp32) over the global batch; `only_discriminator_terms`: those
    read through the discriminator by the generator and backbone totals."""
    gather = sync.gather
    all_grid_labels = gather(grid_labels)
    valid = all_grid_labels != losses.IGNORE_INDEX
    fake_adversarial = gather(fake_output.adversarial_logit).float()
    terms: dict[str, torch.Tensor] = {}
    terms["cls_real"] = losses.multi_scale_classification_loss(
        [gather(out.class_logits).float() for out in real_outputs], gather(labels))
    if not only_discriminator_terms:
        terms["gan_d"] = losses.adversarial_discriminator_loss(
            loss.adversarial, gather(real_outputs[0].adversarial_logit).float(),
            fake_adversarial, valid)
    terms["gan_g"] = losses.adversarial_generator_loss(loss.adversarial, fake_adversarial, valid)
    if not only_discriminator_terms:
        terms["content"] = losses.content_loss(
            loss.content, gather(fake).float(), gather(output.scale1.feature.detach()).float(),
            all_grid_labels, sigmas=loss.mmd_sigmas, grouping=loss.mmd_grouping,
            max_pixels_per_class=loss.mmd_max_pixels_per_class or None,
            estimator=loss.mmd_estimator)
    if loss.discriminator_cls_fake or loss.generator_cls_fake:
        terms["cls_fake"] = losses.classification_loss(
            gather(fake_output.class_logits).float(), all_grid_labels)
    if only_discriminator_terms:
        return terms
    if loss.adversarial == "wgan_gp":
        local_valid = grid_labels != losses.IGNORE_INDEX
        penalty = _wgan_gradient_penalty(model, output.scale1.feature, fake, local_valid)
        terms["gradient_penalty"] = sync.mean_share(penalty, int(local_valid.sum()))
    if train_backbone:
        terms["kl"] = losses.kl_divergence(gather(output.scale1.latent_mean).float(),
                                           gather(output.scale1.latent_logvar).float(), valid)
    return terms


def _wgan_gradient_penalty(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                           valid: torch.Tensor) -> torch.Tensor:
    """Unweighted WGAN-GP penalty on valid pixels, the adversarial head as the critic."""
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
                        unseen_rate: float, generator: torch.Generator,
                        excluded: Sequence[int] = ()) -> torch.Tensor:
    """(B, h, w) labels i.i.d. per pixel: weight 1 per seen, 1 + `unseen_rate` per unseen class,
    0 for the `excluded` classes."""
    weights = torch.ones(num_seen + num_unseen, dtype=torch.float64)
    weights[num_seen:] += unseen_rate
    if excluded:
        weights[list(excluded)] = 0.0
    return torch.multinomial(weights, batch_size * height * width, replacement=True,
                             generator=generator).view(batch_size, height, width)


def _latent_noise(shape: tuple[int, ...], generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    """N(0, I) latents from `generator` (on a GPU from a device generator it seeds: faster)."""
    if device.type != "cuda":
        return torch.randn(shape, generator=generator)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    device_generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=device_generator, device=device)


def _keep_mask(like: torch.Tensor, keep: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """`torch.empty_like(like).bernoulli_(keep, generator=...).bool()` on the CPU from the same
    draws, ~3x faster: torch keeps an element when the low 53 bits of its draw (a double) < keep."""
    bits = torch.empty_like(like, dtype=torch.int64).random_(generator=generator)
    return bits.bitwise_and_(2 ** 53 - 1) < math.ceil(keep * 2 ** 53)


@functools.lru_cache(maxsize=None)
def _bernoulli_is_portable() -> bool:
    """Whether this torch's CPU `bernoulli_` is the kernel `_keep_mask` reproduces (not MKL's)."""
    generator = torch.Generator().manual_seed(0)
    expected = torch.empty(1024).bernoulli_(0.5, generator=generator).bool()
    return torch.equal(_keep_mask(expected, 0.5, generator.manual_seed(0)), expected)


def _dropout(x: torch.Tensor, dropout: torch.nn.Dropout) -> torch.Tensor:
    """`dropout(x)` to the bit with the mask of `_keep_mask` on the CPU; in place without grad."""
    keep = 1.0 - dropout.p
    if (not dropout.training or keep in (0.0, 1.0) or x.device.type != "cpu"
            or not _bernoulli_is_portable()):
        return dropout(x)
    noise = _keep_mask(x, keep).to(x.dtype).div_(keep)
    return x * noise if x.requires_grad else x.mul_(noise)


def _generate(model: torch.nn.Module, labels: torch.Tensor, latent: torch.Tensor
              ) -> torch.Tensor:
    """`model.generate(labels, latent)` (B, F, h, w), the first conv's embedding half per class."""
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
    """`discriminator(feature).class_logits` (B, K [+ 1], h, w) without the adversarial head."""
    trunk = discriminator.trunk
    return discriminator.classifier(_dropout(trunk.activation(trunk.conv(feature)), trunk.dropout))


def classifier_step(model: torch.nn.Module, optimizers: Optimizers, loss: LossConfig,
                    draw: LabelDraw, context: StepContext) -> dict[str, float]:
    """One step-2 iteration: features generated for sampled labels train the classifier."""
    scaler, sync, device = context.scaler, context.sync, context.device
    optimizers.zero_grad()
    height, width = draw.grid_size
    all_labels = sample_step2_labels(draw.batch_size, height, width, model.num_seen,
                                     model.num_unseen, draw.unseen_rate, draw.generator,
                                     draw.excluded)
    noise = _latent_noise((draw.batch_size, model.generator.latent_dim, height, width),
                          draw.generator, device)
    labels, noise = sync.local_part(all_labels).to(device), sync.local_part(noise).to(device)
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
    _backward(updates, optimizers.discriminator, _trainable(model.discriminator),
              loss.step2_discriminator_cls_fake * cls_fake, train_generator, scaler)
    if train_generator:
        _backward(updates, optimizers.generator, _trainable(model.generator),
                  loss.step2_generator_cls_fake * cls_fake, False, scaler)
    return {**results, **_apply_updates(updates, scaler, sync), "skipped": 0.0}


def zero_gradient_steps(model: torch.nn.Module, optimizers: Optimizers,
                        generator_trained: bool) -> None:
    """As the original: step the parameters step 2 does not reach with zero gradients."""
    optimizers.zero_grad()
    updates = [(optimizers.discriminator, list(model.discriminator.adversarial_head.parameters()))]
    if not generator_trained:
        updates.append((optimizers.generator, _trainable(model.generator)))
    for optimizer, parameters in updates:
        for parameter in parameters:
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    optimizers.zero_grad()
