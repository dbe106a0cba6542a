"""Pictures of predictions (OpenCV, BGR uint8 (H, W, 3)): class colours (class k: VOC colour-map
entry k + 1, or a shade of a colour word in its name), palette label PNGs, overlays, legends and
the TensorBoard panel. Hershey fonts only draw ASCII (others become '?')."""

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from cagnet.datasets.shapes_drawing import voc_palette
from cagnet.errors import CagnetError
from cagnet.utils.io import atomic_write_bytes

IGNORE_INDEX = 255
MAX_CLASSES = 254  # label PNG values are class + 1 and must stay below 255
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOUR, BACKGROUND = (30, 30, 30), (255, 255, 255)
# RGB of the colour words a class name may hold; classes sharing one get distinct shades.
NAMED_COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 90, 225),
                 "yellow": (240, 210, 30), "orange": (245, 140, 20), "purple": (135, 60, 180),
                 "pink": (240, 130, 185), "brown": (135, 85, 40), "grey": (128, 128, 128),
                 "gray": (128, 128, 128), "black": (25, 25, 25), "white": (240, 240, 240),
                 "cyan": (30, 200, 210), "magenta": (210, 40, 190)}


def colour_word(name: str) -> str | None:
    """The first colour word of a class name ("striped red" -> "red"), or None."""
    return next((word for word in re.split(r"[\s_\-]+", name.lower())
                 if word in NAMED_COLOURS), None)


def shades(rgb: Sequence[int], count: int) -> np.ndarray:
    """(count, 3) uint8: from darker (mixed with black) to lighter (mixed with white)."""
    base = np.asarray(rgb, dtype=np.float64)
    rows = [base * (1 + amount) if amount < 0 else base + (255 - base) * amount
            for amount in (np.linspace(-0.4, 0.25, count) if count > 1 else [0.0])]
    return np.asarray(rows).round().astype(np.uint8)


def class_colours(num_classes: int, class_names: Sequence[str] | None = None) -> np.ndarray:
    """(K, 3) uint8 RGB: VOC colour-map entry k + 1 for class k, or a shade of its colour word."""
    if not 0 < num_classes <= MAX_CLASSES:
        raise CagnetError(f"cannot colour {num_classes} classes: expected 1..{MAX_CLASSES} "
                          "(label PNG values are class index + 1, below 255)")
    colours = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)[1:num_classes + 1].copy()
    words = [colour_word(name) for name in (class_names or [])[:num_classes]]
    for word in set(words) - {None}:
        members = [index for index, other in enumerate(words) if other == word]
        colours[members] = shades(NAMED_COLOURS[word], len(members))
    return colours


def colourise(labels: np.ndarray, colours: np.ndarray, ignore_colour=(0, 0, 0)) -> np.ndarray:
    """labels (H, W) class indices (255 = ignore) -> (H, W, 3) uint8 RGB."""
    table = np.full((256, 3), ignore_colour, dtype=np.uint8)
    table[:len(colours)] = colours
    return table[np.asarray(labels).clip(0, 255).astype(np.uint8)]


def label_png_bytes(prediction: np.ndarray, colours: np.ndarray, no_class: int | None = None
                    ) -> bytes:
    """A palette PNG of prediction (H, W) class indices 0..K-1 (K = len(colours)): pixel
    value = class + 1, palette entry k + 1 = colours[k]; value 0 (black) = `no_class`."""
    prediction = np.asarray(prediction)
    valid = prediction[prediction != no_class]  # every pixel when `no_class` is None
    if valid.size and (valid.min() < 0 or valid.max() >= len(colours)):
        raise ValueError(f"prediction holds values outside 0..{len(colours) - 1}")
    values = np.where(prediction == no_class, 0, prediction + 1)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1:len(colours) + 1] = colours
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_png(path: str | Path, image_bgr: np.ndarray) -> Path:
    """Write a BGR uint8 (H, W, 3) image as PNG, atomically."""
    ok, data = cv2.imencode(".png", image_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise CagnetError(f"cannot encode an image of shape {image_bgr.shape} as PNG")
    return atomic_write_bytes(path, data.tobytes())


def ascii_text(text: str) -> str:
    """What OpenCV's fonts can draw: non-ASCII characters become '?'."""
    return str(text).encode("ascii", "replace").decode("ascii")


def text_width(text: str, scale: float, thickness: int = 1) -> int:
    return cv2.getTextSize(ascii_text(text), FONT, scale, thickness)[0][0]


def put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float,
             colour=TEXT_COLOUR, thickness: int = 1) -> None:
    """Anti-aliased text with its baseline's left end at `origin` (x, y)."""
    cv2.putText(canvas, ascii_text(text), (int(origin[0]), int(origin[1])), FONT, scale,
                tuple(int(c) for c in colour), thickness, cv2.LINE_AA)


def overlay(image_bgr: np.ndarray, prediction: np.ndarray, colours: np.ndarray,
            alpha: float = 0.5, contour_thickness: int | None = None) -> np.ndarray:
    """image (H, W, 3) BGR with the RGB `colours` (K, 3) of prediction (H, W) blended in (255
    unblended) and every region outlined -> (H, W, 3) uint8 BGR."""
    colour_layer = colourise(prediction, colours)[..., ::-1].astype(np.float32)
    blended = image_bgr.astype(np.float32) * (1.0 - alpha) + colour_layer * alpha
    valid = (prediction != IGNORE_INDEX)[..., None]
    out = np.where(valid, blended, image_bgr.astype(np.float32)).round().astype(np.uint8)
    thickness = contour_thickness or max(1, round(min(prediction.shape) / 200))
    for class_index in np.unique(prediction[prediction != IGNORE_INDEX]):
        mask = (prediction == class_index).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        colour_bgr = tuple(int(c) for c in colours[class_index][::-1])
        cv2.drawContours(out, contours, -1, colour_bgr, thickness, cv2.LINE_8)
    return out


@dataclass(frozen=True)
class LegendEntry:
    """One legend row: class name, RGB colour, tag (seen / unseen / added), pixel share."""

    name: str
    colour: tuple[int, int, int]
    tag: str
    share: float


def legend_entries(prediction: np.ndarray, class_names: Sequence[str], tags: Sequence[str],
                   colours: np.ndarray) -> list[LegendEntry]:
    """The classes present in `prediction` (H, W), largest pixel share first."""
    counts = np.bincount(np.asarray(prediction).ravel(), minlength=len(class_names))
    total = max(int(counts[:len(class_names)].sum()), 1)
    present = [index for index in np.argsort(-counts[:len(class_names)], kind="stable")
               if counts[index] > 0]
    return [LegendEntry(class_names[index], tuple(int(c) for c in colours[index]), tags[index],
                        counts[index] / total) for index in present]


def legend_image(entries: Sequence[LegendEntry], title: str = "classes present",
                 height: int | None = None, scale: float = 0.5) -> np.ndarray:
    """Legend rows (swatch, name, [tag], share) as (H, W, 3) BGR, at least `height` tall."""
    row, swatch, pad = (int(round(size * scale)) for size in (44, 28, 16))
    name_width = max([text_width(e.name, scale) for e in entries] + [text_width(title, scale)])
    tag_width = max([text_width(f"[{e.tag}]", scale) for e in entries] + [0])
    share_width = text_width("100.0 %", scale)
    width = pad + swatch + pad + name_width + pad + tag_width + pad + share_width + pad
    needed = row * (len(entries) + 1) + pad
    canvas = np.full((max(needed, height or 0), width, 3), BACKGROUND, dtype=np.uint8)
    put_text(canvas, title, (pad, row - pad // 2), scale)
    for index, entry in enumerate(entries):
        top = row * (index + 1) + (row - swatch) // 2
        colour_bgr = tuple(int(c) for c in entry.colour[::-1])
        cv2.rectangle(canvas, (pad, top), (pad + swatch, top + swatch), colour_bgr, -1)
        cv2.rectangle(canvas, (pad, top), (pad + swatch, top + swatch), (60, 60, 60), 1)
        baseline, x = top + swatch - max(1, swatch // 6), 2 * pad + swatch
        put_text(canvas, entry.name, (x, baseline), scale)
        tag_colour = (40, 40, 40) if entry.tag == "seen" else (0, 90, 200)
        put_text(canvas, f"[{entry.tag}]", (x + name_width + pad, baseline), scale, tag_colour)
        share = f"{100.0 * entry.share:.1f} %" if entry.share >= 0.0005 else "<0.1 %"
        put_text(canvas, share, (width - pad - text_width(share, scale), baseline), scale)
    return canvas


def side_by_side(images: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    """Concatenate BGR images left to right on a white background, top-aligned."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    x = 0
    for image in images:
        canvas[:image.shape[0], x:x + image.shape[1]] = image
        x += image.shape[1] + gap
    return canvas


def segmentation_panel(image_bgr: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                       colours: np.ndarray) -> np.ndarray:
    """Input (H, W, 3) BGR | ground truth (H, W) (255 drawn black) | prediction (H, W), drawn
    with (K, 3) RGB `colours` -> (3, H, 3 W + 8) uint8 RGB, as `SummaryWriter.add_image` wants."""
    truth, predicted = (colourise(labels, colours)[..., ::-1] for labels in (label, prediction))
    panel = side_by_side([image_bgr, truth, predicted], gap=4)
    return np.ascontiguousarray(panel[..., ::-1].transpose(2, 0, 1))
