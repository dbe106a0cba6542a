"""Exact resume: a run killed with SIGKILL at an arbitrary iteration, or stopped by SIGTERM /
SIGINT, and continued with `--resume` ends with the same weights, optimiser state, metrics and
log as a run that was never interrupted (CPU, `train.deterministic: true`, bit for bit).

The interrupted runs are real `python -m cagnet` processes (their own process group, one
DataLoader worker, while the reference loads in the main process). Each training step sleeps
0.15 s in those processes, so that the poll below sees an early checkpoint long before the run
could end; the sleep changes no number.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cagnet.cli import main
from cagnet.engine.checkpoint import load_checkpoint
from cagnet.errors import CheckpointError

from conftest import REPOSITORY, tiny_config_overrides, write_tiny_voc

COMMON = ["train.deterministic=true", "train.iterations=16", "train.log_interval=4",
          "train.eval_interval=5", "data.validation_holdout=1"]
FINETUNE = ["train.stage=finetune", "train.mixed_period=2", "train.iterations=12",
            "train.eval_interval=0"]
SLOW_CAGNET = """
import runpy, time
import cagnet.engine.loop as loop

def slow(seed):
    def wrapped(*args, **kwargs):
        time.sleep(0.15)
        return seed(*args, **kwargs)
    return wrapped

loop.iteration_seed = slow(loop.iteration_seed)  # called once per iteration of every method
runpy.run_module("cagnet", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The tiny benchmark, a recipe, and the uninterrupted step-1 reference run."""
    folder = tmp_path_factory.mktemp("resume")
    root = write_tiny_voc(folder / "voc")
    recipe = folder / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    reference = folder / "reference"
    assert main(["train", "--output-dir", str(reference)]
                + _arguments(root, recipe, COMMON + ["data.num_workers=0"])) == 0
    return {"folder": folder, "root": root, "recipe": recipe, "reference": reference}


def _arguments(root: Path, recipe: Path, overrides: list[str]) -> list[str]:
    return ["--config", str(recipe)] + [argument for item in
                                        tiny_config_overrides(root) + overrides
                                        for argument in ("--set", item)]


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SLOW_CAGNET] + command, cwd=REPOSITORY,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, iteration: int) -> int:
    path = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            found = load_checkpoint(path)["iteration"] if path.is_file() else -1
        except CheckpointError:
            found = -1
        if found >= iteration:
            return found
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"the run ended or hung before a checkpoint at iteration {iteration}: "
                f"{process.communicate()[1][-2000:]}")


def _same(left, right, where: str = "") -> None:
    """Recursive equality; tensors bit for bit."""
    if isinstance(left, torch.Tensor):
        assert isinstance(right, torch.Tensor) and left.dtype == right.dtype, where
        assert torch.equal(left, right), where
    elif isinstance(left, dict):
        assert set(left) == set(right), where
        for key in left:
            _same(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right)):
            _same(a, b, f"{where}[{index}]")
    else:
        assert left == right, where


def _log_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("seconds_per_iteration", None)
    return records


def _assert_identical_runs(reference: Path, resumed: Path, metrics: bool = True) -> None:
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")
    actual = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert actual["iteration"] == expected["iteration"]
    _same(expected["model"], actual["model"], "model")
    _same(expected["optimizers"], actual["optimizers"], "optimizers")
    for key in ("best_score", "skipped_samples", "nonfinite"):
        assert actual["extra"][key] == expected["extra"][key], key
    if metrics:
        expected_metrics = json.loads((reference / "metrics.json").read_text())
        assert json.loads((resumed / "metrics.json").read_text()) == expected_metrics
    records = _log_records(resumed)
    assert records == _log_records(reference)
    keys = [(record["kind"], record["iteration"]) for record in records]
    assert len(keys) == len(set(keys)), "log.jsonl holds a record twice"
    best = reference / "checkpoints" / "best.pt"
    if best.is_file():
        _same(load_checkpoint(best)["model"],
              load_checkpoint(resumed / "checkpoints" / "best.pt")["model"], "best")


def _kill_resume_compare(setup: dict, command: list[str], overrides: list[str],
                         reference: Path, name: str, kill_at: int,
                         arguments: list[str] | None = None, metrics: bool = True) -> None:
    run_dir = setup["folder"] / name
    arguments = arguments or _arguments(setup["root"], setup["recipe"], overrides)
    process = _start(command + ["--output-dir", str(run_dir)] + arguments)
    reached = _wait_for_checkpoint(process, run_dir, kill_at)
    time.sleep(random.Random(name).uniform(0.0, 0.15))  # land anywhere in the next step
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL and reached >= kill_at
    assert not any((run_dir / name).exists()  # it really died mid-run
                   for name in ("metrics.json", "backbone_init.pt"))
    assert main(command + ["--output-dir", str(run_dir), "--resume"] + arguments) == 0
    _assert_identical_runs(reference, run_dir, metrics)


def test_sigkill_then_resume_equals_an_uninterrupted_step1_run(setup: dict):
    overrides = COMMON + ["train.checkpoint_interval=1", "data.num_workers=1"]
    _kill_resume_compare(setup, ["train"], overrides, setup["reference"], "killed", 2)


def test_sigkill_then_resume_equals_an_uninterrupted_finetune_run(setup: dict):
    init = ["--from", str(setup["reference"] / "checkpoints" / "last.pt")]
    reference = setup["folder"] / "finetune_reference"
    arguments = _arguments(setup["root"], setup["recipe"], FINETUNE + ["data.num_workers=0"])
    assert main(["finetune", "--output-dir", str(reference)] + init + arguments) == 0
    log = _log_records(reference)
    assert any("step2_cls_fake" in record for record in log)  # step-2 iterations did run
    overrides = FINETUNE + ["train.checkpoint_interval=1", "data.num_workers=1"]
    _kill_resume_compare(setup, ["finetune"] + init, overrides, reference, "ft_killed", 3)


def test_sigkill_then_resume_equals_an_uninterrupted_spnet_run(setup: dict):
    """SPNet runs through the same loop: killed and resumed, it ends bit for bit the same."""
    spnet = ["baseline.method=spnet", "train.deterministic=true", "train.iterations=10",
             "optim.backbone_lr=5e-5",
             "train.log_interval=2"]
    reference = setup["folder"] / "spnet_reference"
    assert main(["train", "--output-dir", str(reference)] + _arguments(
        setup["root"], setup["recipe"], spnet + ["data.num_workers=0"])) == 0
    overrides = spnet + ["train.checkpoint_interval=1", "data.num_workers=1"]
    _kill_resume_compare(setup, ["train"], overrides, reference, "spnet_killed", 3)


def test_sigkill_then_resume_equals_an_uninterrupted_pretraining_run(setup: dict):
    """Image-level pretraining too: same checkpoint, optimiser, draws and init file."""
    corpus = setup["folder"] / "corpus"
    (corpus / "images").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    lines = []
    for index in range(12):
        colour = torch.randint(0, 255, (3,), generator=generator)
        image = (colour.view(1, 1, 3) + torch.randint(0, 30, (20, 20, 3), generator=generator))
        from PIL import Image

        Image.fromarray(image.clamp(0, 255).byte().numpy()).save(
            corpus / "images" / f"c{index}.jpg")
        lines.append(f"c{index} {index % 3}")
    (corpus / "labels.txt").write_text("\n".join(lines) + "\n")
    pretrain = ["train.deterministic=true", f"pretrain.corpus={corpus}", "pretrain.iterations=12",
                "pretrain.batch_size=4", "pretrain.image_size=16", "train.log_interval=3"]
    arguments = _arguments(setup["root"], setup["recipe"], pretrain)
    reference = setup["folder"] / "pretrain_reference"
    assert main(["pretrain", "--output-dir", str(reference)] + arguments) == 0
    killed = setup["folder"] / "pretrain_killed"
    _kill_resume_compare(setup, ["pretrain"], [], reference, "pretrain_killed", 3,
                         arguments + ["--set", "train.checkpoint_interval=1"], metrics=False)
    _same(torch.load(reference / "backbone_init.pt", weights_only=True),
          torch.load(killed / "backbone_init.pt", weights_only=True), "init")


def test_sigterm_to_the_process_group_checkpoints_and_exits_143(setup: dict):
    """SIGTERM goes to the whole process group, the DataLoader worker included, as a
    scheduler's pre-emption does; no periodic checkpoint is due, so the one found is the
    stop's own."""
    run_dir = setup["folder"] / "stopped"
    arguments = _arguments(setup["root"], setup["recipe"],
                           COMMON + ["train.checkpoint_interval=1000", "data.num_workers=1"])
    process = _start(["train", "--output-dir", str(run_dir)] + arguments)
    _wait_for_checkpoint(process, run_dir, 0)
    log = run_dir / "log.jsonl"
    while process.poll() is None and not (log.is_file() and log.read_text()):
        time.sleep(0.01)  # past the first log record (iteration 4)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    stopped_at = _stop_message_iteration(stderr, "SIGTERM", run_dir)
    assert 4 <= stopped_at < 16
    assert not (run_dir / "metrics.json").exists()
    assert main(["train", "--output-dir", str(run_dir), "--resume"] + arguments) == 0
    _assert_identical_runs(setup["reference"], run_dir)


def test_sigint_stops_at_the_end_of_the_iteration_with_exit_130(setup: dict, monkeypatch,
                                                                capsys):
    """Ctrl-C during iteration 5 (index 5, the 6th): the step finishes, a checkpoint at
    iteration 6 is written, `cagnet` exits 130; `--resume` then matches the reference."""
    import cagnet.engine.trainer as trainer

    step = trainer.feature_generation_step
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when run as a background job
    calls = []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer, "feature_generation_step", interrupted_step)
    run_dir = setup["folder"] / "interrupted"
    arguments = _arguments(setup["root"], setup["recipe"],
                           COMMON + ["train.checkpoint_interval=1000", "data.num_workers=0"])
    assert main(["train", "--output-dir", str(run_dir)] + arguments) == 130
    assert _stop_message_iteration(capsys.readouterr().err, "SIGINT", run_dir) == 6
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is restored
    monkeypatch.setattr(trainer, "feature_generation_step", step)
    assert main(["train", "--output-dir", str(run_dir), "--resume"] + arguments) == 0
    _assert_identical_runs(setup["reference"], run_dir)


def _stop_message_iteration(stderr: str, name: str, run_dir: Path) -> int:
    """Check the one-line stop message and the checkpoint it names; return its iteration."""
    message = [line for line in stderr.splitlines() if line.startswith("cagnet: stopped by")]
    assert message and f"stopped by {name} after iteration" in message[0], stderr[-2000:]
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert "--resume" in message[0] and str(checkpoint) in message[0]
    iteration = int(message[0].split("after iteration ")[1].split()[0])
    assert load_checkpoint(checkpoint)["iteration"] == iteration
    return iteration


def test_loader_workers_survive_the_first_sigterm_and_ignore_sigint():
    """A worker must outlive the signal that asks the main process to stop (else torch raises
    in the main process mid-iteration); a second SIGTERM, torch's clean-up, still ends it."""
    script = ("import os, signal, sys, time\n"
              "from cagnet.engine.signals import shield_worker_from_stop_signals\n"
              "shield_worker_from_stop_signals(0)\n"
              "os.kill(os.getpid(), signal.SIGINT)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(0.05)\n"
              "print('alive', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(5)\n"
              "print('still alive')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["alive"] and result.returncode == -signal.SIGTERM


def test_resume_of_a_finished_run_changes_nothing_unless_told_to_train_longer(setup: dict):
    import hashlib

    run_dir = setup["folder"] / "finished"
    arguments = _arguments(setup["root"], setup["recipe"], ["train.iterations=2",
                                                            "data.num_workers=0"])
    assert main(["train", "--output-dir", str(run_dir)] + arguments) == 0

    def checksums() -> dict:
        return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(run_dir.rglob("*")) if path.is_file()}

    before = checksums()
    assert main(["train", "--output-dir", str(run_dir), "--resume"] + arguments) == 0
    assert checksums() == before
    longer = arguments + ["--set", "train.iterations=3"]
    assert main(["train", "--output-dir", str(run_dir), "--resume"] + longer) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 3
    records = _log_records(run_dir)
    assert {"kind": "run", "iteration": 2, "event": "extend", "from_iterations": 2,
            "to_iterations": 3} in records
    assert "iterations: 3" in (run_dir / "config.yaml").read_text()
