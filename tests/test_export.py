"""`cagnet export`: the exported TorchScript / ONNX model predicts exactly what the PyTorch
model predicts on the voc-samples photos (ONNX only where onnxruntime is installed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cagnet.cli import main
from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.transforms import EvalTransform
from cagnet.engine.checkpoint import load_model
from cagnet.engine.evaluate import upsampled_argmax

from conftest import SHARED_DATA, write_tiny_voc
from test_predict import train_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export")
    return train_tiny_checkpoint(write_tiny_voc(base / "voc"), base / "run")


def photos(checkpoint: Path) -> list[tuple[np.ndarray, torch.Tensor]]:
    """(image, its (1, 3, S, S) network input) of every voc-samples photo."""
    files = sorted((SHARED_DATA / "voc-samples").glob("*_image.png"))
    if not files:
        pytest.skip(f"{SHARED_DATA / 'voc-samples'} not available")
    config = load_model(checkpoint).config
    transform = EvalTransform(tuple(config.data.mean_bgr), config.eval.warp_size)
    images = [read_image_bgr(file) for file in files]
    return [(image, torch.from_numpy(transform(image, image[..., 0])[0])[None])
            for image in images]


def check_same_predictions(checkpoint: Path, run_exported) -> None:
    model = load_model(checkpoint).model  # the unfolded model, as trained
    for image, batch in photos(checkpoint):
        with torch.no_grad():
            expected = upsampled_argmax(model.segment(batch)[0], image.shape[:2])[0]
        exported = torch.as_tensor(np.asarray(run_exported(batch)))[0]
        assert torch.equal(upsampled_argmax(exported, image.shape[:2])[0], expected)


# torch 2.14 marks TorchScript deprecated in favour of torch.export; the file is still what
# `--format torchscript` promises, and loading it back is the check.
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_predicts_like_pytorch(checkpoint: Path, tmp_path: Path):
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                 "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["warp_size"] == 41 and len(sidecar["class_names"]) == 4
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        check_same_predictions(checkpoint, scripted)


def test_onnx_export_predicts_like_pytorch(checkpoint: Path, tmp_path: Path):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx",
                 "--out", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    check_same_predictions(checkpoint,
                           lambda batch: session.run(None, {"image": batch.numpy()})[0])


def test_missing_onnx_is_a_clear_error_and_help_shows_examples(checkpoint: Path,
                                                              tmp_path: Path, monkeypatch,
                                                              capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install -e ".[export]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "cagnet export --checkpoint" in capsys.readouterr().out
