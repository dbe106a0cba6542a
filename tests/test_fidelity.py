"""The switches that make the paper recipes train what the original release trains
(docs/fidelity.md), each shown doing what it says on a tiny model."""

from __future__ import annotations

from pathlib import Path

import torch

from cagnet.engine.steps import StepContext, feature_generation_step

from conftest import tiny_training_setup

CPU = torch.device("cpu")


def _step(tiny_voc: Path, *extra: str) -> dict[str, dict[str, torch.Tensor]]:
    """One step-1 iteration from fixed weights and inputs (dropout off, z = its mean would
    still differ between orders only through the updated discriminator)."""
    config, model, optimizers, batch = tiny_training_setup(
        tiny_voc, ("model.generator_dropout=[0,0]", "model.discriminator_dropout=0") + extra)
    torch.manual_seed(7)
    feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                            StepContext(CPU))
    return {name: {key: value.detach().clone() for key, value in module.state_dict().items()}
            for name, module in (("discriminator", model.discriminator),
                                 ("generator", model.generator), ("backbone", model.backbone))}


def _equal(first: dict, second: dict) -> bool:
    return all(torch.equal(first[key], second[key]) for key in first)


def test_update_order_original_backpropagates_through_the_updated_discriminator(tiny_voc):
    original = _step(tiny_voc, "loss.update_order=original")
    simultaneous = _step(tiny_voc, "loss.update_order=simultaneous")
    # The discriminator's own update is the same; what reaches the generator and the backbone
    # went through a discriminator that had already stepped, so they end elsewhere.
    assert _equal(original["discriminator"], simultaneous["discriminator"])
    assert not _equal(original["generator"], simultaneous["generator"])
    assert not _equal(original["backbone"], simultaneous["backbone"])
    # With a discriminator that cannot move, the two orders are the same computation.
    frozen = ("optim.discriminator_lr=0", "optim.discriminator_weight_decay=0")
    assert all(_equal(a, b) for a, b in zip(
        _step(tiny_voc, "loss.update_order=original", *frozen).values(),
        _step(tiny_voc, "loss.update_order=simultaneous", *frozen).values()))


def test_padding_centred_to_the_warp_size_as_in_the_original() -> None:
    import numpy as np

    from cagnet.datasets.transforms import TrainTransform

    image = np.full((20, 20, 3), 200, dtype=np.uint8)
    label = np.ones((20, 20), dtype=np.uint8)
    # scale 0.5: the 20 px warp becomes 10 px, padded to max(20, 8) = 20 px, centred
    centred = TrainTransform((0.0, 0.0, 0.0), 20, 8, 0.5, 0.5, flip=False, padding="centred")
    corner = TrainTransform((0.0, 0.0, 0.0), 20, 8, 0.5, 0.5, flip=False,
                            padding="bottom_right")
    padded = np.stack([centred(image, label, np.random.default_rng(seed))[1]
                       for seed in range(200)])
    assert (padded[:, 0, 0] == 255).any()  # padding above and left of the image too
    assert (padded == 255).mean() > 0.3  # a 10 px image in the middle of 20 px
    # bottom / right padding to the crop only: every 8 px crop holds the 10 px image
    assert all((corner(image, label, np.random.default_rng(seed))[1] == 1).all()
               for seed in range(20))


def test_step2_zero_gradient_steps_move_what_the_loss_does_not_reach(tiny_voc: Path) -> None:
    from cagnet.engine.steps import LabelDraw, classifier_step, zero_gradient_steps

    changed = {}
    for switch in (True, False):
        config, model, optimizers, batch = tiny_training_setup(tiny_voc)
        torch.manual_seed(0)
        feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                StepContext(CPU))  # gives Adam a momentum
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        draw = LabelDraw(2, (5, 5), 9.0, torch.Generator().manual_seed(0))
        classifier_step(model, optimizers, config.loss, draw, StepContext(CPU))
        if switch:
            zero_gradient_steps(model, optimizers, generator_trained=False)
        changed[switch] = {name.split(".")[0] + "." + name.split(".")[1]
                           for name, p in model.named_parameters()
                           if not torch.equal(p, before[name])}
    assert "generator.hidden_layers" in changed[True]
    assert "discriminator.adversarial_head" in changed[True]
    assert not any(name.startswith(("generator", "discriminator.adversarial"))
                   for name in changed[False])


def test_online_self_training_labels_each_batch_with_the_current_model(tiny_voc: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch) -> None:
    """The original's `st` phase: every step-1 batch's ignored pixels get the current model's
    best unseen class among its top-p (here top-p = all classes, so every one of them)."""
    import cagnet.engine.trainer as trainer
    from cagnet import losses
    from cagnet.baselines.self_training import train_self_training
    from cagnet.config import load_config

    from conftest import tiny_config_overrides

    overrides = tiny_config_overrides(tiny_voc)
    step1 = trainer.train(load_config(None, overrides), tmp_path / "step1", show_progress=False)
    seen_labels, real_step = [], trainer.feature_generation_step

    def recording(model, images, labels, *args, **kwargs):
        seen_labels.append(labels.clone())
        return real_step(model, images, labels, *args, **kwargs)

    monkeypatch.setattr(trainer, "feature_generation_step", recording)
    from cagnet.baselines.self_training import SelfTraining

    real_labelling, batches = SelfTraining.online_labels, []

    def keep_batch(self, batch):
        batches.append(batch)
        return real_labelling(self, batch)

    monkeypatch.setattr(SelfTraining, "online_labels", keep_batch)
    config = load_config(None, overrides + ["train.iterations=1", "self_training.top_p=4"])
    assert config.self_training.labelling == "online"
    train_self_training(config, tmp_path / "st", step1.checkpoint, show_progress=False)
    labels, original = seen_labels[0], batches[0]["label"]
    grid = losses.resize_labels(original, labels.shape[-2:])
    assert labels.shape[-2:] != original.shape[-2:]  # the feature grid, as the original
    assert (labels[grid == 255] == 3).all() and (grid == 255).any()
    assert torch.equal(labels[grid != 255], grid[grid != 255])


def test_generator_latent_noise_ablation_replaces_the_contextual_code(tiny_voc: Path,
                                                                        monkeypatch) -> None:
    from cagnet.models import CaGNet

    latents, real = {}, CaGNet.generate
    for source in ("context", "noise"):
        config, model, optimizers, batch = tiny_training_setup(
            tiny_voc, (f"model.generator_latent={source}",))
        recorded = []
        monkeypatch.setattr(CaGNet, "generate", lambda self, labels, latent: recorded.append(
            latent.clone()) or real(self, labels, latent))
        torch.manual_seed(0)
        feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                StepContext(CPU))
        latents[source] = recorded[0]
    noise = latents["noise"]
    assert abs(float(noise.mean())) < 0.2 and abs(float(noise.std()) - 1) < 0.2
    assert not torch.allclose(noise, latents["context"])
