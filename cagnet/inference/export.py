"""`cagnet export` (TorchScript, or ONNX with `pip install -e ".[export]"`): input `image`
(1, 3, S, S) float32, BGR minus `data.mean_bgr`, S = `eval.warp_size`; output `logits`
(1, K, h, w) on the stride-8 grid; `<file>.json` records S, the mean and the class names."""

import importlib.util
import io
import warnings
from pathlib import Path

import torch

from cagnet.engine.checkpoint import load_model
from cagnet.errors import ConfigError
from cagnet.models.fold import inference_model
from cagnet.utils.io import atomic_write_bytes, atomic_write_json


def export_checkpoint(checkpoint: str | Path, format_name: str, out: str | Path) -> Path:
    """Write `checkpoint`'s folded model to `out` (onnx / torchscript) and `<out>.json`."""
    if format_name not in ("onnx", "torchscript"):
        raise ConfigError(f"--format: expected onnx or torchscript, got {format_name!r}")
    if format_name == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ConfigError("--format onnx needs the optional packages onnx and onnxruntime: "
                          'pip install -e ".[export]"')
    loaded = load_model(checkpoint)
    size = loaded.config.eval.warp_size
    model, example = inference_model(loaded.model), torch.zeros(1, 3, size, size)
    buffer = io.BytesIO()
    # Both exporters are deprecated upstream for torch.export, but torch is pinned and they
    # need nothing beyond `onnx`: keep their warnings off the user's console.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format_name == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), buffer)
        else:
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["image"],
                              output_names=["logits"], opset_version=17)
    out = atomic_write_bytes(out, buffer.getvalue())
    atomic_write_json(Path(f"{out}.json"), {
        "checkpoint": str(checkpoint), "format": format_name, "warp_size": size,
        "mean_bgr": list(loaded.config.data.mean_bgr), "class_names": loaded.class_names,
        "tags": loaded.tags})
    return out
