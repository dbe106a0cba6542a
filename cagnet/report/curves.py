"""A small line chart drawn with OpenCV (BGR uint8): score curves in [0, 1] (NaN points skipped)
against the calibration constant T, the chosen T marked."""

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from cagnet.report.pictures import (BACKGROUND, FONT, TEXT_COLOUR, ascii_text, put_text,
                                    write_png)

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 60, 190, 40, 50
AXIS_COLOUR, GRID_COLOUR, MARK_COLOUR = (90, 90, 90), (225, 225, 225), (40, 40, 200)
# BGR colours of the series, in order (blue, orange, green, purple, brown, grey).
SERIES_COLOURS = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (189, 103, 148),
                  (75, 86, 140), (127, 127, 127))


def _to_pixels(x: float, y: float, x_range: tuple[float, float]) -> tuple[int, int]:
    span = max(x_range[1] - x_range[0], 1e-9)
    column = LEFT + (x - x_range[0]) / span * (WIDTH - LEFT - RIGHT)
    row = HEIGHT - BOTTOM - y * (HEIGHT - TOP - BOTTOM)
    return int(round(column)), int(round(row))


def _axes(canvas: np.ndarray, x_range: tuple[float, float], x_label: str) -> None:
    for tick in np.linspace(0.0, 1.0, 6):
        left, row = _to_pixels(x_range[0], float(tick), x_range)
        right, _ = _to_pixels(x_range[1], float(tick), x_range)
        cv2.line(canvas, (left, row), (right, row), GRID_COLOUR, 1)
        put_text(canvas, f"{tick:.1f}", (LEFT - 36, row + 4), 0.4)
    for tick in np.linspace(x_range[0], x_range[1], 6):
        column, bottom = _to_pixels(float(tick), 0.0, x_range)
        cv2.line(canvas, (column, bottom), (column, bottom + 4), AXIS_COLOUR, 1)
        put_text(canvas, f"{tick:.2f}", (column - 14, bottom + 18), 0.4)
    origin = _to_pixels(x_range[0], 0.0, x_range)
    cv2.line(canvas, origin, _to_pixels(x_range[1], 0.0, x_range), AXIS_COLOUR, 1)
    cv2.line(canvas, origin, _to_pixels(x_range[0], 1.0, x_range), AXIS_COLOUR, 1)
    put_text(canvas, x_label, ((WIDTH - RIGHT + LEFT) // 2 - 40, HEIGHT - 12), 0.5)


def curve_chart(x_values: Sequence[float], series: dict[str, Sequence[float]], title: str,
                x_label: str = "T", marked_x: float | None = None,
                dashed: Sequence[str] = ()) -> np.ndarray:
    """(HEIGHT, WIDTH + legend overflow, 3) chart: series against `x_values` (`dashed` ones as
    dots), `marked_x`; the canvas grows to the right until every legend name fits."""
    widest = max((cv2.getTextSize(ascii_text(name), FONT, 0.4, 1)[0][0] for name in series),
                 default=0)
    overflow = max(0, 38 + widest + 8 - RIGHT)  # the names start 38 px right of the plot
    canvas = np.full((HEIGHT, WIDTH + overflow, 3), BACKGROUND, dtype=np.uint8)
    x_range = (min(x_values), max(x_values)) if x_values else (0.0, 1.0)
    _axes(canvas, x_range, x_label)
    put_text(canvas, title, (LEFT, 24), 0.5)
    if marked_x is not None:
        top = _to_pixels(marked_x, 1.0, x_range)
        cv2.line(canvas, top, _to_pixels(marked_x, 0.0, x_range), MARK_COLOUR, 1)
        put_text(canvas, f"T = {marked_x:g}", (top[0] + 4, top[1] + 14), 0.45, MARK_COLOUR)
    for index, (name, values) in enumerate(series.items()):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        points = [_to_pixels(x, min(max(y, 0.0), 1.0), x_range)
                  for x, y in zip(x_values, values) if y is not None and not math.isnan(y)]
        if name in dashed:
            for point in points:
                cv2.circle(canvas, point, 2, colour, -1, cv2.LINE_AA)
        elif len(points) > 1:
            cv2.polylines(canvas, [np.array(points, np.int32)], False, colour, 2, cv2.LINE_AA)
        row = TOP + 18 * index + 8  # of the legend: a short line, then the name
        cv2.line(canvas, (WIDTH - RIGHT + 12, row - 4), (WIDTH - RIGHT + 32, row - 4), colour, 2)
        put_text(canvas, name, (WIDTH - RIGHT + 38, row), 0.4, TEXT_COLOUR)
    return canvas


def write_curve_png(path: str | Path, x_values: Sequence[float],
                    series: dict[str, Sequence[float]], title: str,
                    marked_x: float | None = None, dashed: Sequence[str] = ()) -> Path:
    """Draw `curve_chart` and write it as a PNG."""
    return write_png(path, curve_chart(x_values, series, title, marked_x=marked_x, dashed=dashed))
