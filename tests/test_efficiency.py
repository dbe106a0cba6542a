"""No wasted work: counted with hooks on the backbone, a step-1 iteration runs the backbone once
forward and once backward per training scale (never twice), the finetune phase and step 2 build
no backbone graph, evaluation is single-scale, the class-wise MMD evaluates one kernel matrix per
class, and channels_last / compile are wired without changing fp32 numerics."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from cagnet import losses
from cagnet.engine.evaluate import evaluate
from cagnet.engine.execution import build_execution
from cagnet.engine.optim import build_optimizers, set_learning_rates
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step, feature_generation_step
from cagnet.utils.runtime import autocast_factory, prepare_model

from conftest import BENCH_TINY, REPOSITORY, tiny_training_setup
from deterministic_cli import no_latent_noise

CPU = torch.device("cpu")
NULL_AUTOCAST = autocast_factory(CPU, "none")


def _setup(root: Path, train_backbone: bool = True, extra: tuple[str, ...] = ()):
    return tiny_training_setup(root, extra, train_backbone)


class BackboneCounter:
    """Counts backbone / contextual-module forward calls (and whether autograd was on), the
    gradients flowing back through the stem conv's output (one per backbone forward that is
    back-propagated) and the backward passes that reach the stem conv's weight."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward_calls, self.grad_enabled, self.input_shapes = 0, [], []
        self.context_calls = self.stem_gradients = self.weight_accumulations = 0
        model.backbone.register_forward_hook(self._backbone)
        model.context.register_forward_hook(self._context)
        model.backbone.stem.conv.register_forward_hook(self._stem)
        model.backbone.stem.conv.weight.register_post_accumulate_grad_hook(self._accumulated)

    def _backbone(self, module, inputs, output) -> None:
        self.forward_calls += 1
        self.grad_enabled.append(torch.is_grad_enabled())
        self.input_shapes.append(tuple(inputs[0].shape))

    def _context(self, module, inputs, output) -> None:
        self.context_calls += 1

    def _stem(self, module, inputs, output) -> None:
        if output.requires_grad:
            output.register_hook(self._gradient)

    def _gradient(self, gradient: torch.Tensor) -> None:
        self.stem_gradients += 1

    def _accumulated(self, parameter: torch.Tensor) -> None:
        self.weight_accumulations += 1


def test_step1_runs_the_backbone_once_forward_and_once_backward(tiny_voc: Path):
    config, model, optimizers, batch = _setup(tiny_voc)
    counter = BackboneCounter(model)
    feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                            StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    scales = len(config.model.train_scales)
    assert scales == 3
    assert counter.forward_calls == counter.context_calls == scales
    assert all(counter.grad_enabled)
    assert counter.stem_gradients == scales  # each scale back-propagated once, never twice
    assert counter.weight_accumulations == 1  # one backward pass reaches the backbone


def test_finetune_phase_builds_no_backbone_graph(tiny_voc: Path):
    config, model, optimizers, batch = _setup(tiny_voc, train_backbone=False)
    counter = BackboneCounter(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                            StepContext(torch.device("cpu"), NULL_AUTOCAST), False)
    assert counter.forward_calls == len(config.model.train_scales)
    assert not any(counter.grad_enabled)  # the frozen backbone runs under no_grad
    assert counter.stem_gradients == counter.weight_accumulations == 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_step2_never_calls_the_backbone(tiny_voc: Path):
    config, model, optimizers, _ = _setup(tiny_voc, train_backbone=False)
    counter = BackboneCounter(model)
    grid = model.feature_size(config.data.crop_size, config.data.crop_size)
    result = classifier_step(model, optimizers, config.loss, LabelDraw(2, grid, 9.0, torch.Generator().manual_seed(0)),
                             StepContext(CPU, NULL_AUTOCAST))
    assert result["skipped"] == 0.0
    assert counter.forward_calls == counter.context_calls == 0


def test_evaluation_is_single_scale(tiny_voc: Path):
    config, model, _, _ = _setup(tiny_voc)
    counter = BackboneCounter(model)
    warp = config.eval.warp_size
    loader = [{"image": torch.randn(2, 3, warp, warp),
               "label": [torch.randint(0, 4, (30, 20)) for _ in range(2)]} for _ in range(3)]
    confusion = evaluate(model, loader, model.num_classes, "full", warp, CPU)
    assert int(confusion.sum()) == 3 * 2 * 30 * 20
    assert counter.forward_calls == 3  # one backbone call per batch: no extra scales
    assert set(counter.input_shapes) == {(2, 3, warp, warp)}
    assert not any(counter.grad_enabled)


def test_class_mmd_evaluates_one_kernel_matrix_per_class(monkeypatch):
    """The class grouping is vectorised over pixels: one `mmd` call per class present, however
    fragmented the labels (the original's raster-run grouping needs one per run)."""
    labels = (torch.arange(400) % 3)  # every pixel starts a new run: 400 runs, 3 classes
    fake, real = torch.rand(400, 8), torch.rand(400, 8)
    calls = []
    original = losses.mmd
    monkeypatch.setattr(losses, "mmd", lambda x, y, sigmas: calls.append(len(x)) or
                        original(x, y, sigmas))
    losses.class_mmd_loss(fake, real, labels, sigmas=(1.0, 2.0))
    assert sorted(calls) == [133, 133, 134]
    # The raster runs are batched by length: one kernel evaluation per distinct run length.
    batched = []
    original_runs = losses._run_mmd_squared
    monkeypatch.setattr(losses, "_run_mmd_squared", lambda x, y, sigmas: batched.append(
        tuple(x.shape)) or original_runs(x, y, sigmas))
    losses.raster_run_mmd_loss(fake, real, labels, sigmas=(1.0, 2.0))
    assert batched == [(400, 1, 8)]


def test_channels_last_keeps_fp32_numerics(tiny_voc: Path):
    """Same losses and updates up to float rounding. The random draws are switched off: NCHW and
    NHWC tensors receive the same random stream in a different element order (equivalent in
    distribution, not number for number)."""
    config, model, optimizers, batch = _setup(tiny_voc, extra=(
        "model.generator_dropout=[0,0]", "model.discriminator_dropout=0"))
    twin = prepare_model(copy.deepcopy(model), channels_last=True)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    assert twin.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    twin_optimizers = build_optimizers(twin, config.optim, True)
    set_learning_rates(twin_optimizers, 0, config.train.iterations, config.optim)
    images = batch["image"].contiguous(memory_format=torch.channels_last)
    with no_latent_noise():
        expected = feature_generation_step(model, batch["image"], batch["label"], optimizers, config.loss,
                                           StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
        result = feature_generation_step(twin, images, batch["label"], twin_optimizers, config.loss,
                                         StepContext(torch.device("cpu"), NULL_AUTOCAST), True)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # The updates agree to 0.1% (Adam amplifies rounding where a gradient is near its eps).
    for name, value in model.state_dict().items():
        update = (value - initial[name]).norm()
        assert (twin.state_dict()[name] - value).norm() <= 1e-3 * update + 1e-7, name


def test_compile_flag_compiles_the_backbone_forward_in_place(tiny_voc: Path):
    if not hasattr(torch, "compile") or not hasattr(torch.nn.Module, "compile"):
        pytest.skip("torch.compile is not available in this torch")
    config, model, _, _ = _setup(tiny_voc, extra=("train.compile=true",))
    keys = list(model.state_dict())
    execution = build_execution(config.train, CPU, join_process_group=False)
    assert execution.compile_backbone and execution.context.world_size == 1
    execution.prepare(model)  # compiles lazily: nothing is traced until the first forward
    assert getattr(model.backbone, "_compiled_call_impl", None) is not None
    assert getattr(model.context, "_compiled_call_impl", None) is None
    assert list(model.state_dict()) == keys  # checkpoints keep their key names


def test_benchmark_harness_writes_one_json_line_per_measurement(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPOSITORY / "bench"))
    import benchmark

    out = tmp_path / "results.jsonl"
    tiny = BENCH_TINY
    arguments = ["--config", str(REPOSITORY / "bench" / "cpu_reference.yaml"), "--device", "cpu",
                 "--iterations", "2", "--warmup", "0", "--in-process", "--peak-tflops", "1",
                 "--out", str(out)] + [item for value in tiny for item in ("--set", value)]
    assert benchmark.main(arguments) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["measurement"] for r in records] == ["step1", "finetune_step1", "step2", "eval"]
    for record in records:
        assert record["config"] == "cpu_reference" and record["amp"] == "none"
        assert record["batch"] == 2 and record["crop"] == 33 and record["threads"] == 1
        assert len(record["seconds"]) == 2 and record["seconds_median"] > 0
        assert record["peak_memory_mib"] > 0 and record["flops"] > 0
        assert record["fraction_of_peak"] == pytest.approx(record["achieved_tflops"])
    step1, finetune, step2, evaluation = records
    # The frozen backbone has no backward: the finetune phase does well under half the work.
    assert finetune["flops"] < 0.5 * step1["flops"] and step2["flops"] < finetune["flops"]
    assert step1["images_per_second"] == pytest.approx(2 / step1["seconds_median"])
    assert evaluation["eval_warp"] == 41 and evaluation["images_per_second"] > 0
