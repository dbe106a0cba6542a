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
`[embedding(label), z]` is detached, so no generator loss reaches the backbone.

Step 2 (`classifier_step`) never touches the backbone: it samples a label map of the feature
grid's size over seen + unseen classes, generates features from N(0, I) latents and trains the
classifier on them.
"""

from __future__ import annotations

import math
from typing import Callable, ContextManager

import torch

from cagnet import losses
from cagnet.config import LossConfig
from cagnet.engine.optim import Optimizers

IGNORE_INDEX = 255


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def _backward(total: torch.Tensor, parameters: list[torch.nn.Parameter], retain: bool) -> None:
    if parameters and total.requires_grad:
        total.backward(inputs=parameters, retain_graph=retain)


def _all_finite(terms: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(value.detach()).all()) for value in terms.values())


def feature_generation_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                            optimizers: Optimizers, loss: LossConfig, train_backbone: bool,
                            autocast: Callable[[], ContextManager]) -> dict[str, float]:
    """One step-1 iteration.

    Args:
        model: a `CaGNet` in train mode.
        images: (B, 3, H, W) mean-subtracted BGR crops.
        labels: (B, H, W) int64 training labels: seen classes 0..S-1, everything else 255.
        optimizers: the optimisers; `optimizers.backbone` is used only when `train_backbone`.
        loss: kinds and coefficients.
        train_backbone: False in the finetune phase (backbone frozen, run without a graph).
        autocast: a zero-argument factory of the forward's autocast context.

    Returns:
        Every raw loss term as a float, plus `skipped` = 1.0 when a non-finite term made the
        step skip its update (the weights are then unchanged).
    """
    optimizers.zero_grad()
    with autocast():
        with torch.set_grad_enabled(train_backbone):
            output = model.multi_scale_features(images, sample_latent=True)
        real = output.scale1.feature
        grid_labels = losses.resize_labels(labels, real.shape[-2:])
        valid = grid_labels != IGNORE_INDEX
        real_outputs = [model.discriminator(feature) for feature in output.features]
        fake = model.generate(grid_labels, output.scale1.latent.detach())
        fake_output = model.discriminator(fake)

    terms: dict[str, torch.Tensor] = {}
    terms["cls_real"] = losses.multi_scale_classification_loss(
        [out.class_logits.float() for out in real_outputs], labels)
    terms["gan_d"] = losses.adversarial_discriminator_loss(
        loss.adversarial, real_outputs[0].adversarial_logit.float(),
        fake_output.adversarial_logit.float(), valid)
    terms["gan_g"] = losses.adversarial_generator_loss(
        loss.adversarial, fake_output.adversarial_logit.float(), valid)
    terms["content"] = losses.content_loss(
        loss.content, fake.float(), real.detach().float(), grid_labels, sigmas=loss.mmd_sigmas,
        grouping=loss.mmd_grouping, max_pixels_per_class=loss.mmd_max_pixels_per_class or None)
    if loss.discriminator_cls_fake or loss.generator_cls_fake:
        terms["cls_fake"] = losses.classification_loss(fake_output.class_logits.float(),
                                                       grid_labels)
    if loss.adversarial == "wgan_gp":
        terms["gradient_penalty"] = _wgan_gradient_penalty(model, real, fake, valid, loss)
    if train_backbone:
        terms["kl"] = losses.kl_divergence(output.scale1.latent_mean.float(),
                                           output.scale1.latent_logvar.float(), valid)

    zero = terms["cls_real"].new_zeros(())
    discriminator_total = (loss.discriminator_adversarial * terms["gan_d"]
                           + loss.discriminator_cls_real * terms["cls_real"]
                           + loss.discriminator_cls_fake * terms.get("cls_fake", zero)
                           + terms.get("gradient_penalty", zero))
    generator_total = (loss.generator_adversarial * terms["gan_g"]
                       + loss.generator_content * terms["content"]
                       + loss.generator_cls_fake * terms.get("cls_fake", zero))
    results = {name: float(value.detach()) for name, value in terms.items()}
    if not _all_finite(terms):
        optimizers.zero_grad()
        return {**results, "skipped": 1.0}

    _backward(discriminator_total, _trainable(model.discriminator), retain=True)
    _backward(generator_total, _trainable(model.generator), retain=train_backbone)
    if train_backbone:
        backbone_total = loss.kl * terms["kl"] + loss.backbone_cls_real * terms["cls_real"]
        _backward(backbone_total,
                  _trainable(model.backbone) + _trainable(model.context), retain=False)
    for optimizer in optimizers.named().values():
        optimizer.step()
    results.update(loss_discriminator=float(discriminator_total.detach()),
                   loss_generator=float(generator_total.detach()), skipped=0.0)
    if train_backbone:
        results["loss_backbone"] = float(backbone_total.detach())
    return results


def _wgan_gradient_penalty(model: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                           valid: torch.Tensor, loss: LossConfig) -> torch.Tensor:
    """WGAN-GP penalty on valid pixels; the critic is the discriminator's adversarial head."""
    real_pixels = real.detach().permute(0, 2, 3, 1)[valid].float()
    fake_pixels = fake.detach().permute(0, 2, 3, 1)[valid].float()
    if real_pixels.shape[0] == 0:
        return real.new_zeros(()).float()
    discriminator = model.discriminator

    def critic(pixels: torch.Tensor) -> torch.Tensor:
        maps = pixels[:, :, None, None]
        return discriminator.adversarial_logit(discriminator.trunk(maps)).flatten()

    return losses.gradient_penalty(critic, real_pixels, fake_pixels, weight=loss.gradient_penalty)


def sample_step2_labels(batch_size: int, height: int, width: int, num_seen: int, num_unseen: int,
                        unseen_rate: float, generator: torch.Generator) -> torch.Tensor:
    """(B, h, w) int64 labels drawn i.i.d. per pixel over seen + unseen classes: each seen class
    has weight 1 and each unseen class weight 1 + `unseen_rate` (method.md §3.2)."""
    weights = torch.ones(num_seen + num_unseen, dtype=torch.float64)
    weights[num_seen:] += unseen_rate
    draws = torch.multinomial(weights, batch_size * height * width, replacement=True,
                              generator=generator)
    return draws.view(batch_size, height, width)


def classifier_step(model: torch.nn.Module, batch_size: int, grid_size: tuple[int, int],
                    optimizers: Optimizers, loss: LossConfig, unseen_rate: float,
                    generator: torch.Generator, device: torch.device,
                    autocast: Callable[[], ContextManager]) -> dict[str, float]:
    """One step-2 iteration: generated features of seen + unseen classes train the classifier
    (discriminator trunk + cls head); the generator only trains when its step-2 coefficient is
    non-zero (COCO). No image and no backbone are involved."""
    optimizers.zero_grad()
    height, width = grid_size
    labels = sample_step2_labels(batch_size, height, width, model.num_seen, model.num_unseen,
                                 unseen_rate, generator).to(device)
    noise = torch.randn(batch_size, model.class_embeddings.shape[1], height, width,
                        generator=generator).to(device)
    train_generator = loss.step2_generator_cls_fake != 0
    with autocast():
        with torch.set_grad_enabled(train_generator):
            fake = model.generate(labels, noise)
        logits = model.discriminator(fake).class_logits
    cls_fake = losses.classification_loss(logits.float(), labels)
    if not math.isfinite(float(cls_fake.detach())):
        optimizers.zero_grad()
        return {"step2_cls_fake": float(cls_fake.detach()), "skipped": 1.0}
    _backward(loss.step2_discriminator_cls_fake * cls_fake, _trainable(model.discriminator),
              retain=train_generator)
    if train_generator:
        _backward(loss.step2_generator_cls_fake * cls_fake, _trainable(model.generator),
                  retain=False)
        optimizers.generator.step()
    optimizers.discriminator.step()
    return {"step2_cls_fake": float(cls_fake.detach()), "skipped": 0.0}
