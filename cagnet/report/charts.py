"""Evaluation pictures (OpenCV, BGR uint8) of a (K, K) confusion matrix in model class order (rows
= ground truth): the row-normalised heat map, the per-class IoU bars, and the matrix as CSV."""

import csv
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from cagnet.report.pictures import BACKGROUND, put_text, text_width, write_png
from cagnet.utils.io import atomic_write_text

SEEN_COLOUR = (180, 119, 31)  # BGR of a blue
UNSEEN_COLOUR = (14, 127, 255)  # BGR of an orange
GRID_COLOUR, MISSING_COLOUR = (220, 220, 220), (200, 200, 200)


def confusion_csv(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """CSV: a header of predicted class names, then per ground-truth class its counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ground truth \\ prediction", *class_names])
    writer.writerows([name, *[int(value) for value in row]]
                     for name, row in zip(class_names, np.asarray(confusion)))
    return buffer.getvalue()


def row_normalise(confusion: np.ndarray) -> np.ndarray:
    """(K, K) counts -> (K, K) fractions of each ground-truth row (NaN rows: class absent)."""
    matrix = np.asarray(confusion, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, matrix / totals, np.nan)


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """(...,) fractions in [0, 1] -> (..., 3) BGR from OpenCV's viridis map; NaN -> grey."""
    levels = np.nan_to_num(values, nan=0.0).clip(0, 1)
    lookup = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)
    colours = lookup[(levels * 255).round().astype(np.uint8), 0]
    colours[np.isnan(values)] = MISSING_COLOUR
    return colours


def _rotated_labels(names: Sequence[str], cell: int, length: int, scale: float,
                    colours: Sequence[tuple]) -> np.ndarray:
    """Column labels reading bottom to top, each centred on its column: (length, K * cell, 3)."""
    strip = np.full((len(names) * cell, length, 3), BACKGROUND, dtype=np.uint8)
    for index, name in enumerate(names):
        baseline = index * cell + (cell + int(20 * scale)) // 2
        put_text(strip, name, (4, baseline), scale, colours[index])
    return np.ascontiguousarray(np.rot90(strip, k=1))


def _split_colours(num_classes: int, num_seen: int) -> list[tuple]:
    return [SEEN_COLOUR if index < num_seen else UNSEEN_COLOUR for index in range(num_classes)]


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], num_seen: int,
                     title: str = "confusion (rows = ground truth, row-normalised)") -> np.ndarray:
    """Heat map of the row-normalised confusion matrix, class names on both axes, the seen /
    unseen blocks marked (white lines, blue / orange bars); percentages in cells when they fit."""
    fractions, num_classes = row_normalise(confusion), len(class_names)
    cell = int(np.clip(720 // max(num_classes, 1), 5, 40))
    scale = float(np.clip(cell / 40, 0.3, 0.45))
    colours = _split_colours(num_classes, num_seen)
    name_length = max(text_width(name, scale) for name in class_names) + 10
    band = 14
    left, top = name_length + band + 6, int(40 * max(scale, 0.4)) + name_length + band + 6
    size = num_classes * cell
    canvas = np.full((top + size + 40, left + size + 90, 3), BACKGROUND, dtype=np.uint8)
    put_text(canvas, title, (10, int(26 * max(scale, 0.4))), max(scale, 0.45))
    canvas[top:top + size, left:left + size] = np.repeat(
        np.repeat(_heat_colours(fractions), cell, 0), cell, 1)
    for index, name in enumerate(class_names):
        baseline = top + index * cell + (cell + int(20 * scale)) // 2
        put_text(canvas, name, (left - band - 6 - text_width(name, scale), baseline), scale,
                 colours[index])
    labels = _rotated_labels(class_names, cell, name_length, scale, colours)
    canvas[top - band - 6 - name_length:top - band - 6, left:left + size] = labels
    if cell >= 26:
        for (row, column), value in np.ndenumerate(fractions):
            if not math.isnan(value) and value >= 0.005:
                text = f"{100 * value:.0f}"
                x = left + column * cell + (cell - text_width(text, 0.35)) // 2
                ink = (20, 20, 20) if value > 0.6 else (255, 255, 255)
                put_text(canvas, text, (x, top + row * cell + cell // 2 + 4), 0.35, ink)
    blocks = ((0, num_seen, SEEN_COLOUR, "seen"),
              (num_seen, num_classes - num_seen, UNSEEN_COLOUR, "unseen"))
    for offset, count, colour, label in blocks:
        if count <= 0:
            continue
        start, end = offset * cell, (offset + count) * cell
        cv2.rectangle(canvas, (left - band - 2, top + start), (left - 4, top + end - 1), colour, -1)
        cv2.rectangle(canvas, (left + start, top - band - 2), (left + end - 1, top - 4), colour, -1)
        if end - start >= text_width(label, 0.35) + 4:
            put_text(canvas, label, (left + start + 2, top - 6), 0.35, (255, 255, 255))
    if 0 < num_seen < num_classes:
        split = num_seen * cell
        cv2.line(canvas, (left + split, top), (left + split, top + size - 1), (255, 255, 255), 2)
        cv2.line(canvas, (left, top + split), (left + size - 1, top + split), (255, 255, 255), 2)
    _colour_bar(canvas, left + size + 20, top, min(size, 300))
    return canvas


def _colour_bar(canvas: np.ndarray, x: int, y: int, height: int) -> None:
    """A vertical 0..100 % scale of the heat-map colours."""
    canvas[y:y + height, x:x + 14] = _heat_colours(np.linspace(1.0, 0.0, height))[:, None, :]
    for fraction in (0.0, 0.5, 1.0):
        y_tick = y + int(round((1 - fraction) * (height - 1)))
        put_text(canvas, f"{100 * fraction:.0f}%", (x + 18, y_tick + 4), 0.35)


def iou_figure(scores: Mapping, class_names: Sequence[str], num_seen: int) -> np.ndarray:
    """Per-class IoU bars (blue seen, orange unseen, n/a if absent), dashed seen / unseen mIoU."""
    ious = [float("nan") if value is None else float(value) for value in scores["iou"]]
    scale, row, bar_length = 0.45, 22, 420
    name_length = max(text_width(name, scale) for name in class_names) + 12
    left, top = name_length + 10, 76
    bottom = top + row * len(class_names)
    canvas = np.full((bottom + 40, left + bar_length + 80, 3), BACKGROUND, dtype=np.uint8)

    def number(key: str) -> str:
        value = scores.get(key)
        return "n/a" if value is None or value != value else f"{value:.4f}"
    put_text(canvas, f"hIoU {number('hiou')}   mIoU seen {number('miou_seen')}   "
             f"mIoU unseen {number('miou_unseen')}", (10, 24), 0.5)
    for offset, (label, colour) in enumerate((("seen", SEEN_COLOUR), ("unseen", UNSEEN_COLOUR))):
        x = left + offset * 110
        cv2.rectangle(canvas, (x, 38), (x + 14, 52), colour, -1)
        put_text(canvas, label, (x + 20, 50), 0.42)
    for tick in np.linspace(0, 1, 6):
        x = left + int(round(tick * bar_length))
        cv2.line(canvas, (x, top - 4), (x, bottom), GRID_COLOUR, 1)
        put_text(canvas, f"{tick:.1f}", (x - 10, bottom + 18), 0.38)
    colours = _split_colours(len(class_names), num_seen)
    for index, (name, value) in enumerate(zip(class_names, ious)):
        y = top + index * row
        put_text(canvas, name, (left - 8 - text_width(name, scale), y + row - 7), scale)
        if math.isnan(value):
            put_text(canvas, "n/a", (left + 4, y + row - 7), 0.4, (120, 120, 120))
            continue
        end = left + int(round(value * bar_length))
        cv2.rectangle(canvas, (left, y + 3), (max(end, left + 1), y + row - 3), colours[index], -1)
        put_text(canvas, f"{value:.3f}", (end + 4, y + row - 7), 0.4)
    for key, colour in (("miou_seen", SEEN_COLOUR), ("miou_unseen", UNSEEN_COLOUR)):
        value = scores.get(key)
        if value is not None and value == value:
            x = left + int(round(value * bar_length))
            for y in range(top - 4, bottom, 8):
                cv2.line(canvas, (x, y), (x, min(y + 4, bottom)), colour, 2)
    return canvas


def write_evaluation_figures(out_dir: str | Path, confusion: np.ndarray, scores: Mapping,
                             class_names: Sequence[str], num_seen: int) -> list[Path]:
    """Write `confusion.csv`, `confusion.png` and `iou.png` into `out_dir` (atomically)."""
    out_dir, confusion = Path(out_dir), np.asarray(confusion)
    return [atomic_write_text(out_dir / "confusion.csv", confusion_csv(confusion, class_names)),
            write_png(out_dir / "confusion.png",
                      confusion_figure(confusion, class_names, num_seen)),
            write_png(out_dir / "iou.png", iou_figure(scores, class_names, num_seen))]
