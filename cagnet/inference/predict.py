"""`cagnet predict`: segment images of any size with a trained model and draw the results.

Each image goes through the evaluation pipeline: mean subtraction, a warp to the checkpoint's
`eval.warp_size` (aspect ratio not kept, as in evaluation), one single-scale forward, and the
real-class logits bilinearly upsampled to the image's original resolution before the argmax —
so predictions are exactly what `cagnet eval` scores (protocol `full`). Very large images are
upsampled in bands of rows (`grid_sample`, the same sampling as `F.interpolate`), so memory
stays bounded whatever the size.

Outputs per image `<name>` (the file stem; `<stem>_<extension>` when two inputs share a stem):

    <name>_labels.png   palette PNG, original size: value k + 1 = model class k (0 unused),
                        colours = the VOC colour map (see `cagnet.report.pictures`)
    <name>_overlay.png  the image blended with the class colours (alpha 0.5) and outlined
    <name>_legend.png   classes present: colour, name, [seen / unseen / added], pixel share
    <name>_panel.png    (--panel) image | overlay | legend side by side
    <name>_logits.npy   (--save-logits) float32 (K, h, w) real-class logits on the feature grid
                        of the warped image (upsample bilinearly to the image size for scores)

plus `predictions.json` (class table with colours, one record per image, skipped files).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.transforms import EvalTransform
from cagnet.errors import DataError
from cagnet.engine.checkpoint import LoadedModel
from cagnet.utils.io import atomic_write_bytes, atomic_write_json
from cagnet.report.pictures import (class_colours, label_png_bytes, legend_entries, legend_image,
                              overlay, side_by_side, write_png)

LOGGER = logging.getLogger("cagnet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
UPSAMPLE_BUDGET = 1 << 25  # float elements of one upsampled (K, rows, W) block


def list_inputs(path: str | Path) -> tuple[list[Path], bool]:
    """The images to process and whether `path` is a folder (its files with an image suffix,
    sorted, not recursive) rather than a single file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"no images in folder {path} (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)})")
        return files, True
    if not path.exists():
        raise DataError(f"input not found: {path}")
    return [path], False


def output_names(files: list[Path]) -> list[str]:
    """One output name per input: the stem, or `<stem>_<extension>` when stems collide."""
    stems = [file.stem for file in files]
    return [stem if stems.count(stem) == 1 else f"{stem}_{file.suffix.lstrip('.').lower()}"
            for stem, file in zip(stems, files)]


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int],
                     budget: int = UPSAMPLE_BUDGET) -> torch.Tensor:
    """Argmax of the logits (K, h, w) bilinearly upsampled (align_corners=False) to
    size (H, W): (H, W) int64. Works in bands of rows when K * H * W exceeds `budget`."""
    num_classes = logits.shape[0]
    height, width = size
    if num_classes * height * width <= budget:
        upsampled = F.interpolate(logits[None].float(), size=size, mode="bilinear",
                                  align_corners=False)
        return upsampled[0].argmax(0)
    rows_per_band = max(1, budget // (num_classes * width))
    device = logits.device
    # Normalised pixel centres: grid_sample(align_corners=False, border) samples exactly where
    # F.interpolate(align_corners=False) does, including the clamping at the edges.
    xs = (2 * torch.arange(width, device=device, dtype=torch.float32) + 1) / width - 1
    out = torch.empty(height, width, dtype=torch.long, device=device)
    for top in range(0, height, rows_per_band):
        rows = torch.arange(top, min(top + rows_per_band, height), device=device)
        ys = (2 * rows.float() + 1) / height - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        band = F.grid_sample(logits[None].float(), grid, mode="bilinear",
                             padding_mode="border", align_corners=False)
        out[top:top + len(rows)] = band[0].argmax(0)
    return out


@torch.no_grad()
def predict_image(loaded: LoadedModel, image_bgr: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """image (H, W, 3) BGR uint8 -> (prediction (H, W) int64 model classes, grid logits
    (K, h, w) float32)."""
    config = loaded.config
    transform = EvalTransform(tuple(config.data.mean_bgr), config.eval.warp_size)
    warped, _ = transform(image_bgr, np.zeros(image_bgr.shape[:2], dtype=np.uint8))
    batch = torch.from_numpy(warped)[None].to(loaded.device)
    loaded.model.eval()
    logits = loaded.model.segment(batch)[0].float()
    prediction = upsampled_argmax(logits, image_bgr.shape[:2])
    return prediction.cpu().numpy(), logits.cpu().numpy()


def write_outputs(out_dir: Path, name: str, image_bgr: np.ndarray, prediction: np.ndarray,
                  logits: np.ndarray, loaded: LoadedModel, save_logits: bool = False,
                  panel: bool = False, alpha: float = 0.5) -> dict:
    """Write one image's outputs; returns its record for `predictions.json`."""
    num_classes = len(loaded.class_names)
    colours = class_colours(num_classes)
    entries = legend_entries(prediction, loaded.class_names, loaded.tags, colours)
    blended = overlay(image_bgr, prediction, colours, alpha)
    legend = legend_image(entries)
    outputs = {"labels": atomic_write_bytes(out_dir / f"{name}_labels.png",
                                            label_png_bytes(prediction, num_classes)),
               "overlay": write_png(out_dir / f"{name}_overlay.png", blended),
               "legend": write_png(out_dir / f"{name}_legend.png", legend)}
    if panel:
        outputs["panel"] = write_png(out_dir / f"{name}_panel.png",
                                     side_by_side([image_bgr, blended, legend]))
    if save_logits:
        buffer = io.BytesIO()
        np.save(buffer, logits.astype(np.float32), allow_pickle=False)
        outputs["logits"] = atomic_write_bytes(out_dir / f"{name}_logits.npy",
                                               buffer.getvalue())
    return {"size": [int(image_bgr.shape[1]), int(image_bgr.shape[0])],
            "classes": [{"name": e.name, "tag": e.tag, "share": round(float(e.share), 6)}
                        for e in entries],
            "outputs": {key: path.name for key, path in outputs.items()}}


def predict_paths(loaded: LoadedModel, input_path: str | Path, out_dir: str | Path,
                  save_logits: bool = False, panel: bool = False, alpha: float = 0.5,
                  show_progress: bool = True, source: str = "") -> dict:
    """Predict one image or every image of a folder into `out_dir`.

    A single unreadable image raises DataError naming the file; in a folder, unreadable images
    are skipped with a warning and counted. Returns the content of `predictions.json`.
    """
    from tqdm import tqdm

    files, folder = list_inputs(input_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, skipped = {}, []
    for file, name in tqdm(list(zip(files, output_names(files))), desc="predict", unit="image",
                           disable=not (folder and show_progress), dynamic_ncols=True):
        try:
            image = read_image_bgr(file)
        except DataError as error:
            if not folder:
                raise
            LOGGER.warning("skipping %s", error)
            skipped.append(str(file))
            continue
        prediction, logits = predict_image(loaded, image)
        records[str(file)] = write_outputs(out_dir, name, image, prediction, logits, loaded,
                                           save_logits, panel, alpha)
    colours = class_colours(len(loaded.class_names))
    summary = {
        "checkpoint": str(source),
        "warp_size": loaded.config.eval.warp_size,
        "classes": [{"index": index, "png_value": index + 1, "name": name, "tag": tag,
                     "colour_rgb": [int(c) for c in colours[index]]}
                    for index, (name, tag) in enumerate(zip(loaded.class_names,
                                                            loaded.tags))],
        "images": records,
        "skipped": skipped,
    }
    atomic_write_json(out_dir / "predictions.json", summary)
    if skipped:
        LOGGER.warning("%d of %d images were unreadable and skipped (listed in %s)",
                       len(skipped), len(files), out_dir / "predictions.json")
    return summary
