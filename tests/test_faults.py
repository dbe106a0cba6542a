"""Injected faults and what each must produce: non-finite losses (rollback or stop), corrupt,
truncated and malicious checkpoints, a full disk, a crash between a log record and the next
checkpoint, and bad data of every kind surfacing as one `cagnet: error: ...` line."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cagnet.engine.run_dir as run_dir_module
import cagnet.engine.loop as loop
import cagnet.engine.trainer as trainer
from cagnet import losses
from cagnet.cli import main
from cagnet.config import load_config
from cagnet.engine.checkpoint import FORMAT, load_checkpoint, newest_valid_checkpoint
from cagnet.datasets.corpus import read_corpus
from cagnet.datasets.splits import read_id_list
from cagnet.errors import CagnetError, CheckpointError, DataError, TrainingError

from conftest import tiny_config_overrides

FAST = ["train.iterations=8", "train.log_interval=1", "train.checkpoint_interval=2",
        "train.deterministic=true", "data.num_workers=0"]


def _config(root: Path, *extra: str):
    return load_config(None, tiny_config_overrides(root) + FAST + list(extra))


def _records(run: Path, kind: str | None = None) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["kind"] == kind]


class NaNInjector:
    """Make the step-1 loss NaN at chosen iterations (through the real step, whose skip path
    runs), on the first pass only or on every pass; snapshot weights at chosen iterations."""

    def __init__(self, monkeypatch, bad: set[int], every_pass: bool = False) -> None:
        self.bad, self.every_pass, self.monkeypatch = bad, every_pass, monkeypatch
        self.iteration, self.passes, self.snapshots = -1, {}, {}
        self.learning_rates: dict[tuple[int, int], float] = {}
        real_seed, real_step = loop.iteration_seed, trainer.feature_generation_step

        def seed(base: int, iteration: int) -> int:
            self.iteration = iteration
            return real_seed(base, iteration)

        def step(model, images, labels, optimizers, *args, **kwargs):
            passes = self.passes[self.iteration] = self.passes.get(self.iteration, 0) + 1
            self.snapshots[(self.iteration, passes)] = {
                k: v.clone() for k, v in model.state_dict().items()}
            self.learning_rates[(self.iteration, passes)] = \
                optimizers.generator.param_groups[0]["lr"]
            if self.iteration in self.bad and (passes == 1 or self.every_pass):
                with monkeypatch.context() as patch:
                    patch.setattr(losses, "kl_divergence",
                                  lambda *a, **k: torch.tensor(float("nan")))
                    return real_step(model, images, labels, optimizers, *args, **kwargs)
            return real_step(model, images, labels, optimizers, *args, **kwargs)

        monkeypatch.setattr(loop, "iteration_seed", seed)
        monkeypatch.setattr(trainer, "feature_generation_step", step)


def test_rollback_restores_the_checkpoint_and_lowers_the_learning_rates(tiny_voc, tmp_path,
                                                                        monkeypatch):
    # Checkpoints at 2 and 4; iteration 4 updates; 5 and 6 are NaN -> back to iteration 4.
    injector = NaNInjector(monkeypatch, bad={5, 6})
    config = _config(tiny_voc, "train.on_nonfinite=rollback", "train.max_nonfinite_steps=2",
                     "train.rollback_lr_factor=0.5", "train.max_rollbacks=2")
    result = trainer.train(config, tmp_path / "run", show_progress=False)
    assert injector.passes[4] == 2 and injector.passes[7] == 1
    before, after = injector.snapshots[(4, 1)], injector.snapshots[(4, 2)]
    assert all(torch.equal(before[key], after[key]) for key in before)  # exact restore
    assert not all(torch.equal(before[k], injector.snapshots[(5, 1)][k]) for k in before)
    assert injector.learning_rates[(4, 2)] == pytest.approx(0.5 * injector.learning_rates[(4, 1)])
    assert injector.learning_rates[(7, 1)] == pytest.approx(0.5 * config.optim.generator_lr)
    fault = _records(tmp_path / "run", "fault")
    assert fault == [{"kind": "fault", "iteration": 6, "event": "rollback", "to_iteration": 4,
                      "streak": 0, "rollbacks": 1, "lr_scale": 0.5}]
    assert _records(tmp_path / "run", "train")[-1]["lr_generator"] == pytest.approx(1e-4)
    final = load_checkpoint(result.checkpoint)
    assert final["iteration"] == 8 and final["extra"]["nonfinite"]["lr_scale"] == 0.5
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_stop_names_the_iteration_and_the_checkpoint(tiny_voc, tmp_path, monkeypatch, capsys):
    NaNInjector(monkeypatch, bad={5, 6})
    config = _config(tiny_voc, "train.max_nonfinite_steps=2")
    assert config.train.on_nonfinite == "stop"  # the documented default
    with pytest.raises(TrainingError, match=r"2 non-finite losses in a row .* at iteration 6.*"
                       r"last checkpoint: .*last\.pt \(iteration 4\)"):
        trainer.train(config, tmp_path / "run", show_progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 4


def test_rollbacks_are_bounded(tiny_voc, tmp_path, monkeypatch):
    injector = NaNInjector(monkeypatch, bad={5, 6}, every_pass=True)
    config = _config(tiny_voc, "train.on_nonfinite=rollback", "train.max_nonfinite_steps=2",
                     "train.max_rollbacks=1")
    with pytest.raises(TrainingError, match=r"after 1 rollback\(s\) \(train.max_rollbacks = 1"):
        trainer.train(config, tmp_path / "run", show_progress=False)
    assert injector.passes[6] == 2


def test_a_crash_after_a_log_record_leaves_no_duplicate_after_resume(tiny_voc, tmp_path,
                                                                    monkeypatch):
    """Log records 1..5 are written, the newest checkpoint is at 4 when iteration 5 crashes:
    the resumed run cuts log.jsonl back to the checkpoint and rewrites 5..8 once."""
    config = _config(tiny_voc)
    trainer.train(config, tmp_path / "reference", show_progress=False)
    real_step = trainer.feature_generation_step
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("injected crash in iteration 5")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "feature_generation_step", crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        trainer.train(config, tmp_path / "run", show_progress=False)
    assert [r["iteration"] for r in _records(tmp_path / "run")] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(trainer, "feature_generation_step", real_step)
    trainer.train(config, tmp_path / "run", resume=True, show_progress=False)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds_per_iteration"} for r in records]

    assert strip(_records(tmp_path / "run")) == strip(_records(tmp_path / "reference"))


# --- checkpoints -------------------------------------------------------------------------------


@pytest.fixture()
def finished_run(tiny_voc, tmp_path) -> Path:
    trainer.train(_config(tiny_voc), tmp_path / "run", show_progress=False)
    return tmp_path / "run"


def test_corrupt_newest_checkpoint_falls_back_to_previous(finished_run, caplog):
    folder = finished_run / "checkpoints"
    assert load_checkpoint(folder / "previous.pt")["iteration"] == 6  # rotated from last.pt
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[: len(data) // 2])  # truncated
    path, state = newest_valid_checkpoint(finished_run)
    assert path.name == "previous.pt" and state["iteration"] == 6
    assert "last.pt" in caplog.text and "truncated" in caplog.text
    assert (folder / "last.pt.corrupt").is_file() and not (folder / "last.pt").exists()
    (folder / "previous.pt").write_bytes(b"garbage")
    (folder / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint to resume from: checkpoint "
                       r".*last\.pt is truncated.*; checkpoint .*previous\.pt is truncated, "
                       r"corrupt or not a checkpoint: Unsupported operand"):
        newest_valid_checkpoint(finished_run)


def test_resume_falls_back_and_finishes_through_the_cli(finished_run, tiny_voc, capsys):
    (finished_run / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 not a zip")
    arguments = [a for item in tiny_config_overrides(tiny_voc) + FAST for a in ("--set", item)]
    recipe = finished_run / "recipe.yaml"
    recipe.write_text("name: tiny\n")
    base = ["train", "--config", str(recipe), "--output-dir", str(finished_run)] + arguments
    assert main(base + ["--resume"]) == 0  # from previous.pt (iteration 6) to the end
    assert load_checkpoint(finished_run / "checkpoints" / "last.pt")["iteration"] == 8
    for name in ("last.pt", "previous.pt", "last.pt.corrupt"):
        (finished_run / "checkpoints" / name).write_bytes(b"\x00" * 10)
    capsys.readouterr()
    assert main(base + ["--resume"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cagnet: error: no valid checkpoint") and "Traceback" not in error
    assert "last.pt" in error and "previous.pt" in error and error.count("\n") == 1


class Payload:
    """Unpickling this object would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_code(tiny_voc, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "iteration": 1, "model": {}, "payload": Payload(marker)},
               evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil\.pt.*weights_only"):
        load_checkpoint(evil)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(evil, run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        trainer.train(_config(tiny_voc), run, resume=True, show_progress=False)
    config = _config(tiny_voc, "train.stage=finetune")
    with pytest.raises(CheckpointError, match="evil.pt"):
        trainer.train(config, tmp_path / "ft", init_checkpoint=evil, show_progress=False)
    with pytest.raises(CheckpointError, match="evil.pt"):
        trainer.train(_config(tiny_voc, f"model.init={evil}"), tmp_path / "init",
                      show_progress=False)
    assert not marker.exists()


def test_wrong_architecture_checkpoint_is_named(finished_run, tiny_voc, tmp_path):
    config = _config(tiny_voc, "train.stage=finetune", "model.base_width=8")
    with pytest.raises(CheckpointError, match=r"last\.pt does not match the model"):
        trainer.train(config, tmp_path / "ft", show_progress=False,
                      init_checkpoint=finished_run / "checkpoints" / "last.pt")


def test_a_failed_write_keeps_the_old_checkpoint(finished_run, tiny_voc, monkeypatch):
    before = (finished_run / "checkpoints" / "last.pt").read_bytes()

    def full_disk(obj, stream):
        stream.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    longer = _config(tiny_voc, "train.iterations=12")  # a finished run resumes to train longer
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*No space left"):
        trainer.train(longer, finished_run, resume=True, show_progress=False)
    leftovers = [p.name for p in (finished_run / "checkpoints").iterdir() if "tmp" in p.name]
    assert not leftovers
    assert (finished_run / "checkpoints" / "previous.pt").read_bytes() == before
    assert (finished_run / "checkpoints" / "last.pt").read_bytes() == before


def test_run_directory_checks_before_training(finished_run, tiny_voc, tmp_path, monkeypatch):
    with pytest.raises(CagnetError, match="already holds checkpoints: pass --resume"):
        trainer.train(_config(tiny_voc), finished_run, show_progress=False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_dir_module.shutil, "disk_usage", lambda path: usage(1, 1, 10 ** 6))
    with pytest.raises(CagnetError, match=r"not enough free space in .*checkpoints: 976\.6 KiB "
                       r"free, about .* MiB needed"):
        trainer.train(_config(tiny_voc), tmp_path / "new", show_progress=False)
    assert not list((tmp_path / "new" / "checkpoints").iterdir())  # nothing written

    def read_only(self, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(CagnetError, match="is not writable: .*Permission denied"):
        trainer.train(_config(tiny_voc), tmp_path / "other", show_progress=False)


# --- bad data through the CLI -------------------------------------------------------------------


def _cli_error(root: Path, tmp_path: Path, capsys, *extra: str) -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: tiny\n")
    arguments = [a for item in tiny_config_overrides(root) + FAST + list(extra)
                 for a in ("--set", item)]
    status = main(["train", "--config", str(recipe), "--output-dir", str(tmp_path / "run"),
                   "--overwrite"] + arguments)
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]  # after the progress bar
    assert status == 2 and error.startswith("cagnet: error: "), stderr[-2000:]
    assert "Traceback" not in stderr and stderr.count("cagnet: error") == 1, stderr[-2000:]
    return error


def _jpeg_bytes(root: Path, name: str) -> bytes:
    return (root / "JPEGImages" / f"{name}.jpg").read_bytes()


def test_bad_images_in_loader_workers_give_one_line(tiny_voc, tmp_path, capsys):
    image = tiny_voc / "JPEGImages" / "img_001.jpg"
    image.write_bytes(_jpeg_bytes(tiny_voc, "img_001")[:300])  # truncated
    error = _cli_error(tiny_voc, tmp_path, capsys, "data.num_workers=1")
    assert "img_001.jpg" in error and ("truncated" in error or "corrupt" in error)
    assert "DataLoader worker" not in error
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert "img_001.jpg is corrupt" in _cli_error(tiny_voc, tmp_path, capsys)


def test_bad_masks_give_one_line(tiny_voc, tmp_path, capsys):
    mask = tiny_voc / "SegmentationClass" / "img_002.png"
    Image.fromarray(np.zeros((30, 48), dtype=np.uint8), mode="L").save(mask)
    assert "img_002.png: mask size 48x30 differs from image size 48x40" in \
        _cli_error(tiny_voc, tmp_path, capsys, "data.num_workers=1")
    Image.fromarray(np.full((40, 48), 7, dtype=np.uint8), mode="L").save(mask)
    error = _cli_error(tiny_voc, tmp_path, capsys)
    assert "img_002.png: label values [7] are neither a class id (0..4) nor 255" in error


def test_missing_files_and_empty_lists_fail_before_training(tiny_voc, tmp_path, capsys):
    (tiny_voc / "SegmentationClass" / "img_005.png").unlink()  # a val image's mask
    error = _cli_error(tiny_voc, tmp_path, capsys)
    assert "data.val_list" in error and "1 listed files are missing" in error
    assert "img_005.png" in error and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    (tiny_voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n\n")
    assert "train.txt is empty: expected one image id per line" in \
        _cli_error(tiny_voc, tmp_path, capsys)


def test_bad_embeddings_classes_and_config_values_give_one_line(tiny_voc, tmp_path, capsys):
    embeddings = tiny_voc / "class_embeddings.npy"
    matrix = np.load(embeddings)
    np.save(embeddings, matrix[:-1])
    assert "class_embeddings.npy has 4 rows but 5 were expected" in \
        _cli_error(tiny_voc, tmp_path, capsys)
    matrix[2, 1] = np.nan
    np.save(embeddings, matrix)
    assert "class_embeddings.npy: rows [2] contain NaN or Inf" in \
        _cli_error(tiny_voc, tmp_path, capsys)
    np.save(embeddings, matrix[0])
    assert "must be 2-D (num_ids, dim) and non-empty" in _cli_error(tiny_voc, tmp_path, capsys)
    (tiny_voc / "split.yaml").write_text("seen: [red circle]\nunseen: [green star]\n")
    assert "'unseen' entry 'green star' is not in the class-name file" in \
        _cli_error(tiny_voc, tmp_path, capsys)
    assert "data.crop_size (45) is larger than data.warp_size (41)" in \
        _cli_error(tiny_voc, tmp_path, capsys, "data.crop_size=45")
    assert "optim.generator_lr: expected a finite number, got NaN or Inf" in \
        _cli_error(tiny_voc, tmp_path, capsys, "optim.generator_lr=.nan")


def test_skip_mode_reports_skipped_samples(tiny_voc, tmp_path):
    (tiny_voc / "JPEGImages" / "img_001.jpg").write_bytes(b"broken")
    run = tmp_path / "run"
    trainer.train(_config(tiny_voc, "data.on_bad_sample=skip"), run, show_progress=False)
    listed = (run / "skipped_samples.txt").read_text().splitlines()[1:]
    assert listed and listed[0].startswith("img_001\t")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped_samples"]["ids"] == ["img_001"]
    assert metrics["skipped_samples"]["events"] == int(listed[0].split("\t")[1]) >= 1
    assert "Skipped training samples: 1 ids" in (run / "report.md").read_text()
    # A broken *test* image is never replaced by another one: that would change the metric.
    (tiny_voc / "JPEGImages" / "img_005.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"img_005\.jpg.*evaluation never skips.*training "
                       r"itself is complete: .*last\.pt is saved"):
        trainer.train(_config(tiny_voc, "data.on_bad_sample=skip"), run, overwrite=True,
                      show_progress=False)


# --- untrusted paths --------------------------------------------------------------------------


def test_list_ids_cannot_escape_the_dataset_or_corpus_root(tmp_path):
    for bad in ("/etc/passwd", "a/../../b", "..", "a\\..\\b", "a\x00b"):
        (tmp_path / "list.txt").write_text(f"ok\n{bad}\nfine\n{bad}\n")
        with pytest.raises(DataError, match=r"list.txt: 2 ids would escape .*line 2: .*line 4"):
            read_id_list(tmp_path / "list.txt")  # every bad line is named
        (tmp_path / "labels.txt").write_text(f"ok 1\n{bad} 2\n")
        with pytest.raises(DataError, match=r"labels.txt, line 2: id .* escapes the corpus"):
            read_corpus(tmp_path, 8, [0.0, 0.0, 0.0])


def test_the_pickle_payload_used_above_would_run(tmp_path):
    """Guard against a vacuous test: plain pickle does execute the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
