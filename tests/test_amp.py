"""Mixed precision on the CPU: the delicate loss terms stay fp32 inside autocast, a bf16 step
gives finite losses close to fp32, and the fp16 GradScaler path (three optimisers, three scaled
backward calls, one update per iteration) handles overflows and skipped iterations."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from cagnet import losses
from cagnet.config import load_config
from cagnet.engine.checkpoint import load_checkpoint
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step, feature_generation_step
from cagnet.engine.trainer import train
from cagnet.errors import ConfigError
from cagnet.utils.runtime import autocast_factory, build_grad_scaler

from conftest import tiny_config_overrides, tiny_training_setup

CPU = torch.device("cpu")
NO_DROPOUT = ("model.generator_dropout=[0,0]", "model.discriminator_dropout=0")


def _setup(root: Path, extra: tuple[str, ...] = (), train_backbone: bool = True):
    return tiny_training_setup(root, NO_DROPOUT + tuple(extra), train_backbone)


def _fp16_scaler(**options) -> torch.amp.GradScaler:
    try:
        scaler = torch.amp.GradScaler("cpu", **options)
    except (RuntimeError, ValueError) as error:
        pytest.skip(f"this torch has no GradScaler for the CPU: {error}")
    if not scaler.is_enabled():
        pytest.skip("GradScaler('cpu') is disabled in this torch build")
    return scaler


def _count_calls(monkeypatch, scaler: torch.amp.GradScaler) -> dict[str, int]:
    calls = {"step": 0, "update": 0}
    for name in calls:
        method = getattr(scaler, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)
        monkeypatch.setattr(scaler, name, counted)
    return calls


def test_delicate_terms_are_fp32_inside_bf16_autocast():
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 16, 5, 5, generator=generator)
    labels = torch.randint(0, 3, (2, 5, 5), generator=generator)
    labels[0, 0] = 255
    valid = labels != 255
    rows = torch.rand(40, 16, generator=generator)
    critic = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    low = {name: value.bfloat16() for name, value in
           {"maps": maps, "x": rows[:20], "y": rows[20:] * 0.5}.items()}

    def terms() -> dict[str, torch.Tensor]:
        return {
            "kl": losses.kl_divergence(low["maps"], low["maps"].abs(), valid),
            "cross_entropy": losses.classification_loss(low["maps"], labels),
            "mmd": losses.mmd(low["x"], low["y"], sigmas=(1.0, 4.0)),
            "gradient_penalty": losses.gradient_penalty(
                lambda x: critic(x), low["x"].float(), low["y"].float(),
                generator=torch.Generator().manual_seed(1)),
        }

    reference = terms()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = terms()
    for name, value in inside.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-7, msg=name)


def test_bf16_step_gives_finite_losses_close_to_fp32(tiny_voc: Path):
    config, model, optimizers, batch = _setup(tiny_voc)
    twin = copy.deepcopy(model)
    twin_optimizers = build_optimizers(twin, config.optim, True)
    set_learning_rates(twin_optimizers, 0, config.train.iterations, config.optim)
    torch.manual_seed(3)
    full = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                   StepContext(torch.device("cpu"), autocast_factory(CPU, "none")), True)
    torch.manual_seed(3)
    half = feature_generation_step(twin, batch["image"], batch["label"], twin_optimizers, config.loss,
                                   StepContext(torch.device("cpu"), autocast_factory(CPU, "bf16")), True)
    assert half["skipped"] == 0.0
    for name in ("cls_real", "gan_d", "gan_g", "content", "kl", "loss_backbone"):
        assert abs(half[name] - full[name]) <= 0.05 * abs(full[name]) + 1e-3, \
            (name, half[name], full[name])


def test_fp16_scaler_steps_each_optimizer_and_updates_once(tiny_voc: Path, monkeypatch):
    for train_backbone, expected_steps in ((True, 3), (False, 2)):
        config, model, optimizers, batch = _setup(tiny_voc, train_backbone=train_backbone)
        scaler = _fp16_scaler(init_scale=16.0)  # the default 2**16 overflows at first
        calls = _count_calls(monkeypatch, scaler)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                         StepContext(torch.device("cpu"), autocast_factory(CPU, "fp16"), scaler), train_backbone)
        assert calls == {"step": expected_steps, "update": 1}
        assert result["skipped"] == 0.0 and result["grad_overflow"] == 0.0
        assert result["grad_scale"] == scaler.get_scale()
        assert all(v == v for v in result.values())
        changed = {k.split(".")[0] for k, v in model.state_dict().items()
                   if not torch.equal(v, before[k])}
        assert changed == ({"backbone", "context", "discriminator", "generator"}
                           if train_backbone else {"discriminator", "generator"})
    calls.update(step=0, update=0)
    classifier_step(model, optimizers, config.loss, LabelDraw(2, (5, 5), 9.0, torch.Generator().manual_seed(0)),
                    StepContext(CPU, autocast_factory(CPU, "fp16"), scaler))
    assert calls == {"step": 1, "update": 1}


def test_fp16_overflow_skips_only_that_optimizer_and_backs_off_once(tiny_voc: Path):
    config, model, optimizers, batch = _setup(tiny_voc)
    scaler = _fp16_scaler(init_scale=1024.0)
    model.discriminator.classifier.bias.register_hook(lambda grad: grad * float("inf"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                     StepContext(torch.device("cpu"), autocast_factory(CPU, "fp16"), scaler), True)
    assert result["skipped"] == 0.0 and result["grad_overflow"] == 1.0
    assert scaler.get_scale() == 512.0  # one update, one back-off
    changed = {k.split(".")[0] for k, v in model.state_dict().items()
               if not torch.equal(v, before[k])}
    assert changed == {"backbone", "context", "generator"}  # the discriminator step was skipped


def test_nonfinite_loss_skips_before_the_scaler(tiny_voc: Path, monkeypatch):
    config, model, optimizers, batch = _setup(tiny_voc)
    scaler = _fp16_scaler(init_scale=1024.0)
    calls = _count_calls(monkeypatch, scaler)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(losses, "kl_divergence", lambda *a, **k: torch.tensor(float("nan")))
    result = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                     StepContext(torch.device("cpu"), autocast_factory(CPU, "fp16"), scaler), True)
    assert result["skipped"] == 1.0 and calls == {"step": 0, "update": 0}
    assert scaler.get_scale() == 1024.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_amp_settings_are_validated_and_the_scaler_is_fp16_only(tiny_voc: Path):
    overrides = tiny_config_overrides(tiny_voc)
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, overrides + ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="train.channels_last"):
        load_config(None, overrides + ["train.channels_last=maybe"])
    config = load_config(None, overrides + ["train.compile=true", "train.channels_last=true"])
    assert config.train.compile and config.train.channels_last
    assert [build_grad_scaler(CPU, amp).is_enabled() for amp in ("none", "bf16")] == [False] * 2


def test_an_fp16_run_checkpoints_its_loss_scale(tiny_voc: Path, tmp_path: Path):
    _fp16_scaler()
    config = load_config(None, tiny_config_overrides(tiny_voc) + [
        "train.amp=fp16", "train.channels_last=true", "train.iterations=2",
        "train.log_interval=1", "eval.max_images=1"])
    result = train(config, tmp_path / "run", show_progress=False)
    extra = load_checkpoint(result.checkpoint)["extra"]
    assert extra["grad_scaler"]["scale"] > 0
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert '"grad_scale"' in log and '"skipped"' not in log
