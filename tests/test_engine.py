"""The training engine on a tiny model: gradients, what step 2 may change, the protocol's
label rule, checkpoint round trips, and a whole train -> finetune -> eval run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cagnet import losses
from cagnet.datasets.build import build_benchmark, build_dataset
from cagnet.cli import main
from cagnet.datasets.segmentation import collate_samples
from cagnet.engine import steps
from cagnet.engine.checkpoint import load_checkpoint, save_checkpoint
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step, feature_generation_step
from cagnet.utils.runtime import autocast_factory

from conftest import tiny_config_overrides, tiny_training_setup

NULL_AUTOCAST = autocast_factory(torch.device("cpu"), "none")


def _setup(root: Path, extra: tuple[str, ...] = (), train_backbone: bool = True):
    return tiny_training_setup(root, extra, train_backbone)


def test_every_trainable_parameter_gets_a_gradient_in_step1(tiny_voc: Path):
    config, model, optimizers, batch = _setup(tiny_voc, ("loss.generator_cls_fake=1",))
    model.train()
    seen_grads = {}

    def recorder(optimizer):
        def record():
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    seen_grads[id(parameter)] = parameter.grad is not None and \
                        bool(parameter.grad.abs().sum() > 0)
        return record

    for optimizer in optimizers.named().values():
        optimizer.step = recorder(optimizer)  # record the gradients instead of stepping
    feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                            StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = [name for name, p in trainable.items() if not seen_grads.get(id(p))]
    assert not missing
    assert not model.context.selector.weight.requires_grad  # the original's untrained selector


def test_step2_changes_only_the_classifier(tiny_voc: Path):
    config, model, optimizers, _ = _setup(tiny_voc, train_backbone=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    classifier_step(model, optimizers, config.loss, LabelDraw(2, (5, 5), 9.0, torch.Generator().manual_seed(0)),
                    StepContext(torch.device("cpu"), NULL_AUTOCAST))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith("discriminator.") for name in changed)
    assert not any("adversarial" in name for name in changed)

    config, model, optimizers, _ = _setup(tiny_voc, ("loss.step2_generator_cls_fake=1",), False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    classifier_step(model, optimizers, config.loss, LabelDraw(2, (5, 5), 9.0, torch.Generator().manual_seed(0)),
                    StepContext(torch.device("cpu"), NULL_AUTOCAST))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("generator.") for name in changed)
    assert not any(name.startswith(("backbone.", "context.")) for name in changed)


def test_no_unseen_label_value_reaches_any_loss(tiny_voc: Path, monkeypatch):
    config, model, optimizers, batch = _setup(tiny_voc, ("loss.generator_cls_fake=1",
                                                         "loss.discriminator_cls_fake=1"))
    raw = build_dataset(config.data, build_benchmark(config).split, 0).read_raw(0)[1]
    assert 4 in raw  # the raw mask holds the unseen class id 4 ...
    values: set[int] = set()

    def spy(function):
        def wrapped(*args, **kwargs):
            for argument in list(args) + list(kwargs.values()):
                if isinstance(argument, torch.Tensor) and not argument.is_floating_point() \
                        and argument.dtype != torch.bool:
                    values.update(argument.unique().tolist())
            return function(*args, **kwargs)
        return wrapped

    for name in ("classification_loss", "multi_scale_classification_loss", "content_loss",
                 "kl_divergence", "adversarial_discriminator_loss",
                 "adversarial_generator_loss"):
        monkeypatch.setattr(losses, name, spy(getattr(losses, name)))
    model.train()
    for draw in range(4):
        dataset = build_dataset(config.data, build_benchmark(config).split, 0)
        batch = collate_samples([dataset[(index, draw)] for index in range(len(dataset))])
        steps.feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                      StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    assert values and values <= {0, 1, 2, 255}  # ... but only seen indices 0..2 and 255 arrive


def test_save_load_then_the_next_step_is_identical(tiny_voc: Path, tmp_path: Path):
    config, model, optimizers, batch = _setup(tiny_voc)
    model.train()
    torch.manual_seed(1)
    feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                            StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, iteration=1, config={},
                           class_names=["a"], num_seen=1, optimizers={key: optimizer.state_dict() for key, optimizer
                                                   in optimizers.named().items()})
    torch.manual_seed(2)
    expected = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                       StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}

    _, restored, restored_optimizers, _ = _setup(tiny_voc)
    state = load_checkpoint(path)
    restored.load_state_dict(state["model"])
    for key, optimizer in restored_optimizers.named().items():
        optimizer.load_state_dict(state["optimizers"][key])
    restored.train()
    torch.manual_seed(2)
    again = feature_generation_step(restored, batch["image"], batch["label"], restored_optimizers, config.loss,
                                    StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    assert again == expected
    for key, value in restored.state_dict().items():
        assert torch.equal(value, expected_weights[key]), key


def test_non_finite_loss_skips_the_update(tiny_voc: Path, monkeypatch):
    config, model, optimizers, batch = _setup(tiny_voc)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(losses, "kl_divergence", lambda *a, **k: torch.tensor(float("nan")))
    result = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                     StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    assert result["skipped"] == 1.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_train_finetune_eval_through_the_cli(tiny_voc: Path, tmp_path: Path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    overrides = [argument for item in tiny_config_overrides(tiny_voc)
                 for argument in ("--set", item)]
    step1 = tmp_path / "step1"
    assert main(["train", "--config", str(recipe), "--output-dir", str(step1)] + overrides) == 0
    assert main(["train", "--config", str(recipe), "--output-dir", str(step1)] + overrides) == 2
    assert "--resume" in capsys.readouterr().err
    finetune = tmp_path / "finetune"
    assert main(["finetune", "--config", str(recipe), "--output-dir", str(finetune), "--from",
                 str(step1 / "checkpoints" / "last.pt"), "--set", "train.stage=finetune",
                 "--set", "train.mixed_period=1"] + overrides) == 0
    metrics = json.loads((finetune / "metrics.json").read_text())
    assert {"hiou", "miou_seen", "miou_unseen", "classes", "protocol"} <= set(metrics)
    assert [row["split"] for row in metrics["classes"]] == ["seen"] * 3 + ["unseen"]
    log = [json.loads(line) for line in (finetune / "log.jsonl").read_text().splitlines()]
    assert any("step2_cls_fake" in record for record in log)
    assert main(["eval", "--checkpoint", str(finetune / "checkpoints" / "last.pt"), "--set",
                 "eval.protocol=original", "--output-dir", str(tmp_path / "eval")]) == 0
    original = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert original["protocol"]["protocol"] == "original"
    assert (step1 / "config.yaml").is_file() and (step1 / "tensorboard").is_dir()
