"""Rendering of the synthetic shapes benchmark, pure functions of a `numpy.random.Generator`.

Images are float32 BGR (H, W, 3) in 0..255, anti-aliased; label masks uint8 (H, W), drawn without
anti-aliasing from the same polygons, so every label pixel is exact. Background clutter uses only
grey, brown, beige and desaturated tones, never the saturated object colours.
"""

import colorsys
from typing import Sequence

import cv2
import numpy as np

from cagnet.datasets.label_sources import voc_colour_map

VOID_LABEL = 255
OBJECT_SHAPES = ("circle", "square", "triangle", "star")
PATTERN_NAMES = ("plain", "striped", "dotted", "checkered")
# Object hues in degrees (0..360). A new colour needs an entry here and in shapes.COLOURS; keep
# it away from the brown / beige clutter hues (20..45 degrees).
COLOUR_HUES = {"red": 0.0, "green": 120.0, "blue": 228.0, "yellow": 57.0, "purple": 285.0,
               "cyan": 185.0}
HUE_JITTER = 6.0  # degrees: "red" varies but never drifts towards orange or magenta
SUBPIXEL_BITS = 4  # cv2.fillPoly `shift`: vertices carry 1/16-pixel precision
# Clutter items: line, ellipse blob, polygon blob, band of parallel stripes.
CLUTTER_KIND_PROBABILITIES = (0.35, 0.3, 0.27, 0.08)


def voc_palette() -> list[int]:
    """The standard 256-entry Pascal VOC colour map, flattened to 768 ints (R, G, B, ...)."""
    return voc_colour_map().reshape(-1).tolist()


def hsv_to_bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    """(3,) float32 BGR in 0..255 for a hue in degrees and saturation/value in 0..1."""
    red, green, blue = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value)
    return np.array([blue, green, red], dtype=np.float32) * 255.0


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int,
                 channels: int = 1) -> np.ndarray:
    """Low-frequency unit-variance-ish noise (H, W, channels): a coarse grid upsampled cubically."""
    coarse = rng.normal(0.0, 1.0, (cells, cells, channels)).astype(np.float32)
    noise = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return noise.reshape(height, width, channels)


def shape_outline(shape: str, centre: tuple[float, float], size: float, angle: float,
                  aspect: float = 1.0) -> np.ndarray:
    """(N, 2) float polygon (x, y) of `shape` whose nominal bounding size is `size` pixels."""
    if shape == "circle":
        theta = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        points = 0.5 * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif shape == "square":
        points = 0.42 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif shape == "triangle":
        theta = -np.pi / 2 + np.arange(3) * 2.0 * np.pi / 3
        points = 0.6 * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif shape == "star":
        theta = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 0.6, 0.6 * 0.42)
        points = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    else:
        raise ValueError(f"unknown shape {shape!r}: expected circle, square, triangle or star")
    points = points * np.array([aspect, 1.0 / aspect])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rotation.T * size + np.asarray(centre, dtype=np.float64)


def _fixed_point(polygon: np.ndarray) -> list[np.ndarray]:
    return [np.round(polygon * (1 << SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)]


def _fill(polygon: np.ndarray, height: int, width: int, value: int, line_type: int) -> np.ndarray:
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, _fixed_point(polygon), value, lineType=line_type, shift=SUBPIXEL_BITS)
    return canvas


def polygon_mask(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of the polygon, drawn without anti-aliasing (exact labels)."""
    return _fill(polygon, height, width, 1, cv2.LINE_8).astype(bool)


def polygon_alpha(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 1) float32 coverage in 0..1 of the polygon, anti-aliased (for the image only)."""
    return (_fill(polygon, height, width, 255, cv2.LINE_AA).astype(np.float32) / 255.0)[:, :, None]


def clutter_colour(rng: np.random.Generator) -> np.ndarray:
    """A grey, brown, beige or desaturated BGR colour that no object class can be mistaken for."""
    family = rng.integers(4)
    if family == 0:  # grey
        return hsv_to_bgr(0.0, 0.0, rng.uniform(0.15, 0.9))
    if family == 1:  # brown
        return hsv_to_bgr(rng.uniform(20, 35), rng.uniform(0.3, 0.55), rng.uniform(0.22, 0.5))
    if family == 2:  # beige
        return hsv_to_bgr(rng.uniform(30, 45), rng.uniform(0.1, 0.28), rng.uniform(0.7, 0.9))
    return hsv_to_bgr(rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.25, 0.8))


def _draw_clutter_item(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """One line, blob, polygon or stripe band, alpha-blended onto `canvas` in place."""
    height, width = canvas.shape[:2]
    side = min(height, width)
    layer = canvas.copy()
    colour = tuple(float(channel) for channel in clutter_colour(rng))
    kind = rng.choice(4, p=CLUTTER_KIND_PROBABILITIES)
    if kind == 0:
        start = (int(rng.integers(-10, width + 10)), int(rng.integers(-10, height + 10)))
        end = (int(rng.integers(-10, width + 10)), int(rng.integers(-10, height + 10)))
        cv2.line(layer, start, end, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    elif kind == 1:
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.uniform(0.05, 0.3) * side), int(rng.uniform(0.05, 0.3) * side))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1,
                    cv2.LINE_AA)
    elif kind == 2:
        centre = rng.uniform((0, 0), (width, height))
        spread, count = rng.uniform(0.05, 0.2) * side, int(rng.integers(3, 7))
        points = centre + rng.normal(0.0, spread, (count, 2))
        cv2.fillPoly(layer, _fixed_point(points), colour, cv2.LINE_AA, shift=SUBPIXEL_BITS)
    else:
        spacing, angle = rng.uniform(5, 14), rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        thickness = int(rng.integers(1, 3))
        for offset in np.arange(-side, side, spacing):
            middle = np.array([width / 2, height / 2]) + offset * normal
            start, end = middle - 2 * side * direction, middle + 2 * side * direction
            cv2.line(layer, tuple(int(v) for v in start), tuple(int(v) for v in end), colour,
                     thickness, cv2.LINE_AA)
    opacity = rng.uniform(0.2, 0.5) if kind == 3 else rng.uniform(0.3, 0.9)
    canvas *= 1.0 - opacity
    canvas += opacity * layer


def draw_background(rng: np.random.Generator, height: int, width: int,
                    clutter_range: tuple[int, int] = (4, 12)) -> np.ndarray:
    """(H, W, 3) float32 BGR: a muted two-colour gradient, smooth mottling, and clutter."""
    colours = [hsv_to_bgr(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.85))
               for _ in range(2)]
    angle = rng.uniform(0, 2 * np.pi)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    projection = np.cos(angle) * columns / width + np.sin(angle) * rows / height
    ramp = (projection - projection.min()) / max(float(np.ptp(projection)), 1e-6)
    canvas = colours[0] * (1.0 - ramp[:, :, None]) + colours[1] * ramp[:, :, None]
    canvas += rng.uniform(6, 18) * smooth_noise(rng, height, width, int(rng.integers(3, 9)))
    canvas += 3.0 * smooth_noise(rng, height, width, 6, channels=3)
    canvas = canvas.astype(np.float32)
    for _ in range(int(rng.integers(clutter_range[0], clutter_range[1] + 1))):
        _draw_clutter_item(rng, canvas)
    return canvas


def object_colour(rng: np.random.Generator, colour: str) -> np.ndarray:
    """(3,) BGR of one object: the class hue with small hue / saturation / value jitter."""
    hue = COLOUR_HUES[colour] + float(np.clip(rng.normal(0.0, HUE_JITTER / 2), -HUE_JITTER,
                                              HUE_JITTER))
    return hsv_to_bgr(hue, rng.uniform(0.65, 1.0), rng.uniform(0.72, 1.0))


def pattern_mask(rng: np.random.Generator, pattern: str, rows: np.ndarray,
                 columns: np.ndarray) -> np.ndarray:
    """(h, w) float32 in [0, 1]: where the surface pattern darkens the object (0 for plain).
    Stripes, dot grids and checks get a random orientation, period and phase."""
    if pattern == "plain":
        return np.zeros(rows.shape, dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    u = np.cos(angle) * columns + np.sin(angle) * rows + rng.uniform(0, 50)
    v = -np.sin(angle) * columns + np.cos(angle) * rows + rng.uniform(0, 50)
    if pattern == "striped":
        period = rng.uniform(6.0, 8.0)
        return (np.mod(u, period) < period / 2).astype(np.float32)
    if pattern == "dotted":
        period = rng.uniform(7.0, 9.0)
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        return (du ** 2 + dv ** 2 < (0.3 * period) ** 2).astype(np.float32)
    if pattern == "checkered":
        period = rng.uniform(7.0, 9.0)
        return (np.mod(np.floor(u / period) + np.floor(v / period), 2) == 1).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERN_NAMES}")


def paint_object(rng: np.random.Generator, image: np.ndarray, polygon: np.ndarray,
                 colour: str, pattern: str = "plain") -> None:
    """Composite one shaded, lightly textured, patterned object onto `image` (H, W, 3) in place
    (only within the polygon's bounding box plus a 2-px margin)."""
    height, width = image.shape[:2]
    left, top = np.clip(np.floor(polygon.min(axis=0)).astype(int) - 2, 0, (width, height))
    right, bottom = np.clip(np.ceil(polygon.max(axis=0)).astype(int) + 3, 0, (width, height))
    if right <= left or bottom <= top:
        return
    centre = polygon.mean(axis=0)
    extent = max(float(np.ptp(polygon, axis=0).max()), 1.0)
    rows, columns = np.mgrid[top:bottom, left:right].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    along = (np.cos(direction) * (columns - centre[0]) + np.sin(direction) * (rows - centre[1]))
    shading = 1.0 + rng.uniform(0.1, 0.3) * along / extent
    if rng.random() < 0.3:  # a soft highlight, as on a glossy object
        spot = centre + rng.uniform(-0.25, 0.25, 2) * extent
        distance = ((columns - spot[0]) ** 2 + (rows - spot[1]) ** 2) / (0.3 * extent) ** 2
        shading = shading + 0.2 * np.exp(-distance)
    darkening = rng.uniform(0.35, 0.55) * pattern_mask(rng, pattern, rows, columns)
    layer = object_colour(rng, colour) * (shading * (1.0 - darkening))[:, :, None]
    layer += rng.uniform(2, 9) * smooth_noise(rng, bottom - top, right - left,
                                              int(rng.integers(3, 8)))
    alpha = polygon_alpha(polygon - (left, top), bottom - top, right - left)
    window = image[top:bottom, left:right]
    window *= 1.0 - alpha
    window += alpha * np.clip(layer, 0.0, 255.0)


def finish_image(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Image-level blur, brightness / contrast jitter and Gaussian noise; returns uint8 BGR."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.8))
    image = (image - 128.0) * rng.uniform(0.8, 1.2) + 128.0 + rng.uniform(-20, 20)
    sigma = np.float32(rng.uniform(2.0, 6.0))
    image = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def add_void_boundary(label: np.ndarray) -> np.ndarray:
    """Copy of `label` where object pixels (1..254) with a differently labelled 4-neighbour are
    void (255): a 1-px ring on the object side of every object edge."""
    differs = np.zeros(label.shape, dtype=bool)
    differs[1:, :] |= label[1:, :] != label[:-1, :]
    differs[:-1, :] |= label[:-1, :] != label[1:, :]
    differs[:, 1:] |= label[:, 1:] != label[:, :-1]
    differs[:, :-1] |= label[:, :-1] != label[:, 1:]
    result = label.copy()
    result[differs & (label > 0) & (label < VOID_LABEL)] = VOID_LABEL
    return result


def place_objects(rng: np.random.Generator, height: int, width: int,
                  objects: Sequence[tuple[int, str]], size_range: tuple[float, float],
                  attempts: int = 12) -> list[tuple[int, str, np.ndarray, np.ndarray]]:
    """(class_id, (pattern, colour), polygon, mask) per object kept, in drawing order. An object
    needs at least half of it inside the image and must leave 40 % of each earlier one visible;
    else it is re-drawn smaller, and dropped after `attempts` tries."""
    side = min(height, width)
    owner = np.full((height, width), -1, dtype=np.int16)
    drawn_area: list[int] = []
    placed = []
    for class_id, class_name in objects:
        pattern, colour = class_name.split(" ", 1)
        shape = OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))]
        for attempt in range(attempts):
            fraction = np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1])))
            size = fraction * side * 0.93 ** attempt
            centre = rng.uniform((0, 0), (width, height))
            polygon = shape_outline(shape, centre, size, rng.uniform(0, 2 * np.pi),
                                    rng.uniform(0.9, 1.1))
            mask = polygon_mask(polygon, height, width)
            area = int(mask.sum())
            if area < 0.5 * cv2.contourArea(polygon.astype(np.float32)) or area < 12:
                continue
            covered = np.bincount(owner[mask & (owner >= 0)], minlength=len(placed))
            remaining = [int((owner == index).sum()) - int(covered[index])
                         for index in range(len(placed))]
            if all(left >= 0.4 * total for left, total in zip(remaining, drawn_area)):
                owner[mask] = len(placed)
                drawn_area.append(area)
                placed.append((class_id, (pattern, colour), polygon, mask))
                break
    return placed


def render_scene(rng: np.random.Generator, height: int, width: int,
                 objects: Sequence[tuple[int, str]],
                 size_range: tuple[float, float] = (0.3, 0.65)) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 BGR and its label (H, W) uint8 (0 background, class ids, 255 on
    a 1-px boundary) of `objects` = (class_id, "pattern colour"), later ones in front."""
    image = draw_background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    for class_id, (pattern, colour), polygon, mask in place_objects(rng, height, width, objects,
                                                                     size_range):
        paint_object(rng, image, polygon, colour, pattern)
        label[mask] = class_id
    return finish_image(rng, image), add_void_boundary(label)


def render_single_object(rng: np.random.Generator, side: int, class_name: str,
                         size_range: tuple[float, float] = (0.3, 0.7)) -> np.ndarray:
    """A pretraining image (side, side, 3) uint8 BGR: one roughly centred object on clutter."""
    pattern, colour = class_name.split(" ", 1)
    shape = OBJECT_SHAPES[int(rng.integers(len(OBJECT_SHAPES)))]
    image = draw_background(rng, side, side, clutter_range=(2, 7))
    centre = side / 2 + rng.uniform(-0.12, 0.12, 2) * side
    polygon = shape_outline(shape, (float(centre[0]), float(centre[1])),
                            rng.uniform(*size_range) * side, rng.uniform(0, 2 * np.pi),
                            rng.uniform(0.9, 1.1))
    paint_object(rng, image, polygon, colour, pattern)
    return finish_image(rng, image)
