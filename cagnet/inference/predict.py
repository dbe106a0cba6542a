"""`cagnet predict`: images of any size through the evaluation pipeline (so predictions are what
`cagnet eval` scores), written per image `<name>` (the stem, `<stem>_<ext>` when stems collide)
as `_labels.png` (palette PNG: k + 1 = class k, 0 = no class), `_overlay.png`, `_legend.png`,
optionally `_panel.png` and `_logits.npy` ((K, h, w) float32 on the feature grid), plus
`predictions.json`."""

import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cagnet.datasets.images import read_image_bgr
from cagnet.datasets.transforms import EvalTransform
from cagnet.engine.checkpoint import LoadedModel
from cagnet.engine.evaluate import segment, upsampled_argmax
from cagnet.errors import DataError
from cagnet.report.pictures import (class_colours, label_png_bytes, legend_entries,
                                    legend_image, overlay, side_by_side, write_png)
from cagnet.utils.io import atomic_write_bytes, atomic_write_json

LOGGER = logging.getLogger("cagnet")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NO_CLASS = 255  # prediction value of a pixel below --min-confidence


def list_inputs(path: str | Path, pattern: str | None = None) -> tuple[list[Path], bool]:
    """The images to process and whether `path` is a folder: its files matching the glob
    `pattern` (default: an image suffix), sorted, not recursive; or the single file."""
    path = Path(path)
    if path.is_dir():
        candidates = path.glob(pattern) if pattern else path.iterdir()
        files = sorted(p for p in candidates if p.is_file()
                       and (pattern or p.suffix.lower() in IMAGE_SUFFIXES))
        if not files:
            wanted = f"--pattern {pattern!r}" if pattern else ", ".join(IMAGE_SUFFIXES)
            raise DataError(f"no images in folder {path} (looked for {wanted})")
        return files, True
    if not path.exists():
        raise DataError(f"input not found: {path}")
    return [path], False


def output_names(files: list[Path]) -> list[str]:
    """One output name per input: the stem, or `<stem>_<extension>` when stems collide."""
    stems = [file.stem for file in files]
    return [stem if stems.count(stem) == 1 else f"{stem}_{file.suffix.lstrip('.').lower()}"
            for stem, file in zip(stems, files)]


@torch.no_grad()
def predict_batch(loaded: LoadedModel, images_bgr: Sequence[np.ndarray],
                  min_confidence: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images (H_i, W_i, 3) BGR uint8, in one batch -> per image (prediction (H_i, W_i) int64,
    NO_CLASS below `min_confidence`; grid logits (K, h, w) float32)."""
    evaluation = loaded.config.eval
    transform = EvalTransform(tuple(loaded.config.data.mean_bgr), evaluation.warp_size)
    warped = [transform(image, np.zeros(image.shape[:2], np.uint8))[0] for image in images_bgr]
    batch = torch.from_numpy(np.stack(warped)).to(loaded.device, memory_format=(
        torch.channels_last if evaluation.channels_last else torch.preserve_format))
    loaded.model.eval()
    logits = segment(loaded.model, batch, evaluation.tta_scales if evaluation.tta else (1.0,),
                     evaluation.tta and evaluation.tta_flip).float()
    results = []
    for image, grid_logits in zip(images_bgr, logits):
        prediction, probability = upsampled_argmax(grid_logits, image.shape[:2],
                                                   confidence=min_confidence > 0)
        if min_confidence > 0:
            prediction[probability < min_confidence] = NO_CLASS
        results.append((prediction.cpu().numpy(), grid_logits.cpu().numpy()))
    return results


def write_outputs(out_dir: Path, name: str, image_bgr: np.ndarray, prediction: np.ndarray,
                  logits: np.ndarray, loaded: LoadedModel, save_logits: bool = False,
                  panel: bool = False, alpha: float = 0.5) -> dict:
    """Write one image's outputs; returns its record for `predictions.json`."""
    num_classes = len(loaded.class_names)
    # "none" is drawn as one more class, in black, after the model's classes.
    model_colours = class_colours(num_classes, loaded.class_names)
    colours = np.vstack([model_colours, np.zeros((1, 3), dtype=np.uint8)])
    shown = np.where(prediction == NO_CLASS, num_classes, prediction)
    entries = legend_entries(shown, loaded.class_names + ["none"], loaded.tags + ["no class"],
                             colours)
    blended, legend = overlay(image_bgr, shown, colours, alpha), legend_image(entries)
    labels_png = label_png_bytes(prediction, model_colours, NO_CLASS)
    outputs = {"labels": atomic_write_bytes(out_dir / f"{name}_labels.png", labels_png),
               "overlay": write_png(out_dir / f"{name}_overlay.png", blended),
               "legend": write_png(out_dir / f"{name}_legend.png", legend)}
    if panel:
        outputs["panel"] = write_png(out_dir / f"{name}_panel.png",
                                     side_by_side([image_bgr, blended, legend]))
    if save_logits:
        buffer = io.BytesIO()
        np.save(buffer, logits.astype(np.float32), allow_pickle=False)
        outputs["logits"] = atomic_write_bytes(out_dir / f"{name}_logits.npy", buffer.getvalue())
    return {"size": [int(image_bgr.shape[1]), int(image_bgr.shape[0])],
            "classes": [{"name": e.name, "tag": e.tag, "share": round(float(e.share), 6)}
                        for e in entries],
            "outputs": {key: path.name for key, path in outputs.items()}}


def _read(file: Path, folder: bool, skipped: list[str]) -> np.ndarray | None:
    """The image, or None (counted in `skipped`) when a folder's file is unreadable."""
    try:
        return read_image_bgr(file)
    except DataError as error:
        if not folder:
            raise
        LOGGER.warning("skipping %s", error)
        skipped.append(str(file))
        return None


def predict_paths(loaded: LoadedModel, input_path: str | Path, out_dir: str | Path,
                  save_logits: bool = False, panel: bool = False, alpha: float = 0.5,
                  show_progress: bool = True, source: str = "", pattern: str | None = None,
                  batch_size: int = 1, min_confidence: float = 0.0) -> dict:
    """Predict an image or a folder's images into `out_dir` (unreadable ones skipped; DataError if
    none was readable); returns the content of `predictions.json`."""
    from tqdm import tqdm

    files, folder = list_inputs(input_path, pattern)
    out_dir, records, skipped = Path(out_dir), {}, []
    named = list(zip(files, output_names(files)))
    with tqdm(total=len(files), desc="predict", unit="image", dynamic_ncols=True,
              disable=not (folder and show_progress)) as progress:
        for start in range(0, len(named), batch_size):
            chunk = [(file, name, _read(file, folder, skipped))
                     for file, name in named[start:start + batch_size]]
            chunk = [entry for entry in chunk if entry[2] is not None]
            results = predict_batch(loaded, [image for _, _, image in chunk], min_confidence) \
                if chunk else []
            for (file, name, image), (prediction, logits) in zip(chunk, results):
                records[str(file)] = write_outputs(out_dir, name, image, prediction, logits,
                                                   loaded, save_logits, panel, alpha)
            progress.update(len(named[start:start + batch_size]))
    if not records:
        raise DataError(f"none of the {len(files)} images in {input_path} could be read "
                        f"(first: {skipped[0]}); nothing was written")
    colours = class_colours(len(loaded.class_names), loaded.class_names)
    classes = [{"index": index, "png_value": index + 1, "name": name, "tag": tag,
                "colour_rgb": [int(c) for c in colours[index]]}
               for index, (name, tag) in enumerate(zip(loaded.class_names, loaded.tags))]
    summary = {"checkpoint": str(source), "warp_size": loaded.config.eval.warp_size,
               "min_confidence": min_confidence, "classes": classes, "images": records,
               "skipped": skipped}
    atomic_write_json(out_dir / "predictions.json", summary)
    if skipped:
        LOGGER.warning("%d of %d images were unreadable and skipped (listed in %s)",
                       len(skipped), len(files), out_dir / "predictions.json")
    return summary
