"""Step 2 (`classifier_step`) against a straightforward reference written here: the same labels,
latents and dropout masks from the same seeds, the same loss and the same updates, to fp32
rounding. The step computes the generator's first layer per class instead of per pixel, skips
the adversarial head and draws dropout masks with `_keep_mask`; none of that may show. Also the
bench's step-2 line: the finetune recipe's loss weights, held against the matmul yardstick."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cagnet.config import load_config
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.steps import LabelDraw, StepContext, _dropout, classifier_step
from cagnet.models.cagnet_model import CaGNet
from cagnet.models.discriminator import Discriminator
from cagnet.models.generator import Generator

from conftest import BENCH_TINY, REPOSITORY

CPU = torch.device("cpu")
NUM_SEEN, NUM_UNSEEN, EMBED = 4, 2, 8
GRID = (5, 7)


def _model() -> CaGNet:
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(NUM_SEEN + NUM_UNSEEN, EMBED), dim=1)
    generator = Generator(EMBED, EMBED, EMBED, hidden_dims=(16, 12), dropouts=(0.1, 0.5))
    discriminator = Discriminator(EMBED, 16, NUM_SEEN + NUM_UNSEEN, extra_logit=True,
                                  dropout=0.5)
    return CaGNet(nn.Identity(), nn.Identity(), generator, discriminator, embeddings,
                  NUM_SEEN).train()


def _reference_step(model: CaGNet, optimizers, loss, draw: LabelDraw) -> float:
    """Step 2 as method.md §3.2 states it, through the model's own forward."""
    optimizers.zero_grad()
    weights = torch.ones(model.num_classes, dtype=torch.float64)
    weights[model.num_seen:] += draw.unseen_rate
    height, width = draw.grid_size
    labels = torch.multinomial(weights, draw.batch_size * height * width, replacement=True,
                               generator=draw.generator).view(draw.batch_size, height, width)
    latent = torch.randn(draw.batch_size, EMBED, height, width, generator=draw.generator)
    train_generator = loss.step2_generator_cls_fake != 0
    with torch.set_grad_enabled(train_generator):
        fake = model.generate(labels, latent)
    cls_fake = F.cross_entropy(model.discriminator(fake).class_logits, labels)
    (loss.step2_discriminator_cls_fake * cls_fake).backward(
        inputs=list(model.discriminator.parameters()), retain_graph=train_generator)
    if train_generator:  # every gradient at the current weights, then the steps
        (loss.step2_generator_cls_fake * cls_fake).backward(
            inputs=list(model.generator.parameters()))
        optimizers.generator.step()
    optimizers.discriminator.step()
    return float(cls_fake.detach())


@pytest.mark.parametrize("generator_weight", [0.0, 0.5])
def test_classifier_step_matches_the_reference(generator_weight: float):
    config = load_config(REPOSITORY / "experiments" / "voc12_finetune.yaml", [])
    loss = dataclasses.replace(config.loss, step2_generator_cls_fake=generator_weight)
    model = _model()
    reference = copy.deepcopy(model)
    optimizers = build_optimizers(model, config.optim, train_backbone=False)
    reference_optimizers = build_optimizers(reference, config.optim, train_backbone=False)
    for each in (optimizers, reference_optimizers):
        set_learning_rates(each, 0, config.train.iterations, config.optim)
    initial = copy.deepcopy(model.state_dict())
    for iteration in range(3):  # Adam's state carries over: later updates are compared too
        draws = [LabelDraw(3, GRID, 9.0, torch.Generator().manual_seed(10 + iteration))
                 for _ in range(2)]
        torch.manual_seed(iteration)  # the dropout masks come from the global generator
        result = classifier_step(model, optimizers, loss, draws[0], StepContext(CPU))
        torch.manual_seed(iteration)
        expected = _reference_step(reference, reference_optimizers, loss, draws[1])
        assert result["skipped"] == 0.0
        assert result["step2_cls_fake"] == pytest.approx(expected, rel=1e-5)
        for (name, value), other in zip(model.named_parameters(), reference.parameters()):
            if value.grad is None or other.grad is None:
                assert value.grad is None and other.grad is None, name
                continue
            torch.testing.assert_close(value.grad, other.grad, rtol=1e-4, atol=1e-7,
                                       msg=name)
            torch.testing.assert_close(value, other, rtol=1e-5, atol=1e-7, msg=name)
    final = model.state_dict()
    assert not torch.equal(final["discriminator.classifier.weight"],
                           initial["discriminator.classifier.weight"])
    assert torch.equal(final["discriminator.adversarial_head.weight"],
                       initial["discriminator.adversarial_head.weight"])
    generator_changed = not torch.equal(final["generator.output.weight"],
                                        initial["generator.output.weight"])
    assert generator_changed == (generator_weight != 0)


@pytest.mark.parametrize("probability", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_dropout_is_nn_dropout_to_the_bit(probability: float, requires_grad: bool,
                                          memory_format: torch.memory_format):
    module = nn.Dropout(probability).train()
    x = (torch.rand(2, 64, 9, 11) + 0.5).contiguous(memory_format=memory_format)
    torch.manual_seed(3)
    expected = module(x.clone().requires_grad_(requires_grad))
    after_expected = torch.rand(4)
    torch.manual_seed(3)
    result = _dropout(x.clone().requires_grad_(requires_grad), module)
    assert torch.equal(result, expected)
    assert torch.equal(torch.rand(4), after_expected)  # the global generator moved alike
    assert _dropout(x, module.eval()) is x


def test_bench_measures_step2_with_the_finetune_weights_against_the_yardstick(tmp_path,
                                                                             monkeypatch):
    monkeypatch.syspath_prepend(str(REPOSITORY / "bench"))
    import benchmark

    out = tmp_path / "results.jsonl"
    tiny = BENCH_TINY
    arguments = ["--config", str(REPOSITORY / "bench" / "cpu_reference.yaml"), "--device", "cpu",
                 "--measure", "matmul,step2,predict", "--matmul-size", "64",
                 "--predict-images", "2", "--predict-folder", str(tmp_path / "absent"),
                 "--iterations", "1", "--warmup", "0", "--in-process", "--out", str(out)]
    arguments += [item for value in tiny for item in ("--set", value)]
    assert benchmark.main(arguments) == 0
    matmul, step2, predict = [json.loads(line) for line in out.read_text().splitlines()]
    assert matmul["gflops"] > 0 and matmul["matrix_size"] == 64
    assert step2["ran_on"].endswith("cpu_reference_finetune.yaml")
    assert step2["loss_weights"]["step2_discriminator_cls_fake"] == 0.125
    assert step2["loss_weights"]["discriminator_cls_real"] == 0.75
    assert step2["fraction_of_matmul"] == pytest.approx(
        step2["flops"] / step2["seconds_median"] / 1e9 / matmul["gflops"])
    assert predict["ran_on"].endswith("cpu_reference.yaml") and predict["predict_images"] == 2
    assert predict["images_per_second"] == pytest.approx(2 / predict["seconds_median"])
    mismatched = arguments[:2] + ["--finetune-config",
                                  str(REPOSITORY / "bench" / "paper_gpu_finetune.yaml"),
                                  "--measure", "step2", "--in-process"]
    assert benchmark.main(mismatched) == 2
