"""The README's quick start, as a user runs it: the installed `cagnet` command in a folder that
is not the checkout (recipes by name, every output under that folder), then the resulting
checkpoint evaluated and used from a third folder. Shrunk to seconds by a small benchmark and
`--set` overrides; the commands are the README's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPOSITORY

TINY = ["model.blocks_per_stage=[1,1,1,1]", "model.base_width=4", "model.aspp_dilations=[1,2]",
        "model.feature_dim=8", "model.context_channels=8", "model.generator_hidden=[16,16]",
        "model.discriminator_hidden=16", "data.warp_size=41", "data.crop_size=33",
        "eval.warp_size=41", "data.num_workers=0", "train.iterations=4", "train.batch_size=2",
        "train.checkpoint_interval=2", "train.eval_interval=0", "train.device=cpu",
        "train.threads=1", "loss.mmd_sigmas=[1,2]", "pretrain.iterations=2",
        "pretrain.batch_size=4", "pretrain.image_size=32"]


def cagnet(folder: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`cagnet ARGUMENTS` run in `folder` with the installed console script (its module when
    the script is not on this interpreter's bin folder)."""
    script = Path(sys.executable).parent / "cagnet"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "cagnet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(command + list(arguments), cwd=folder, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"cagnet {' '.join(arguments)}:\n{result.stderr[-3000:]}"
    return result


def test_readme_quick_start_from_another_folder(tmp_path: Path) -> None:
    started = time.time()
    user, elsewhere = tmp_path / "user", tmp_path / "elsewhere"
    user.mkdir()
    elsewhere.mkdir()
    assert REPOSITORY not in (user, elsewhere)
    # a small benchmark where the demo looks for one (it reuses a complete benchmark)
    cagnet(user, "data", "shapes", "--out", "runs/demo/shapes", "--num-train", "16",
           "--num-val", "8", "--num-validation", "8", "--num-pretrain", "32")
    listing = cagnet(user, "recipes").stdout
    assert "shapes" in listing and "voc12" in listing
    shown = cagnet(user, "config", "show", "--config", "shapes", "--set", "train.iterations=7")
    assert "iterations: 7" in shown.stdout

    demo = cagnet(user, "demo", *[f"--set={override}" for override in TINY])
    assert "demo finished" in demo.stdout
    metrics = json.loads((user / "runs/demo/metrics.json").read_text())
    assert {"hiou", "miou_seen", "miou_unseen", "protocols"} <= set(metrics)
    written_in_checkout = [path for path in (REPOSITORY / "runs").rglob("*")
                           if path.stat().st_mtime >= started]
    assert not written_in_checkout, written_in_checkout[:5]

    checkpoint = user / "runs/demo/finetune/checkpoints/last.pt"
    cagnet(elsewhere, "eval", "--checkpoint", str(checkpoint), "--output-dir", "eval")
    evaluated = json.loads((elsewhere / "eval/metrics.json").read_text())
    assert evaluated["hiou"] == metrics["hiou"]
    image = next((user / "runs/demo/shapes/JPEGImages").glob("*.jpg"))
    cagnet(elsewhere, "predict", "--checkpoint", str(checkpoint), "--input", str(image),
           "--out", "predictions")
    assert (elsewhere / "predictions/predictions.json").is_file()
