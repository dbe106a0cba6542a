"""The built-in synthetic zero-shot benchmark "shapes", written as a Pascal-VOC style folder.

16 compositional classes ("plain red", ..., "checkered yellow" = surface patterns x colours,
ids 1..16 pattern-major; the object outline is a nuisance factor), 4 of them unseen and forming a
Latin square, so every pattern and every colour of an unseen class also occurs in 3 seen classes
and the class embedding (mean of the word vectors of pattern and colour) can transfer. Layout under `out_dir`:

    JPEGImages/<id>.jpg, SegmentationClass/<id>.png   palette PNGs, VOC colour map, values are
                                                      class ids, 0 background, 255 void
    ImageSets/Segmentation/{train,val}.txt            ids `train_00042`, `val_00007`
    class_names.txt, split.yaml, word_vectors.txt     word2vec text format, seeded Gaussian rows
    pretrain/images/<id>.jpg, pretrain/labels.txt     64x64 single-object images of ALL classes
                                                      with image-level labels `<id> <class_id>`
    shapes.json                                       summary, written last = completion marker

Segmentation images draw their classes uniformly over all 16 classes (training images contain
unseen objects, whose pixels the training protocol ignores, as in the real benchmarks). Each
image is a function of (seed, split, index) alone, so the output does not depend on `workers`.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cagnet.datasets.shapes_drawing import render_scene, render_single_object, voc_palette
from cagnet.errors import ConfigError
from cagnet.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMAT = "cagnet-shapes-v2"
COLOURS = ("red", "green", "blue", "yellow")
PATTERNS = ("plain", "striped", "dotted", "checkered")
# A Latin square: every colour and every pattern of an unseen class occurs in 3 seen classes.
UNSEEN_CLASSES = ("striped red", "dotted green", "checkered blue", "plain yellow")
# Words of the vocabulary that no class uses, so the file looks like a real model's vocabulary
# (the object outlines are nuisance factors: a class is a colour and a surface pattern).
DISTRACTOR_WORDS = ("orange", "purple", "pink", "brown", "grey", "black", "white", "cyan",
                    "beige", "magenta", "circle", "square", "triangle", "star", "hexagon",
                    "oval", "cross", "heart", "spotted", "shiny", "rough", "wavy")
PRETRAIN_IMAGE_SIZE = 64
JPEG_QUALITY = 92
MARKER_FILE = "shapes.json"
OBJECTS_PER_IMAGE = (2, 3)
# Seed-sequence tags: every random stream is keyed by (seed, tag, index).
STREAM_TAGS = {"train": 1, "val": 2, "pretrain": 3, "word_vectors": 4}


def class_names() -> list[str]:
    """Line i of `class_names.txt`: `background`, then pattern-major "pattern colour" names
    ("striped red", "plain blue", ...)."""
    return ["background"] + [f"{pattern} {colour}" for pattern in PATTERNS for colour in COLOURS]


def seen_unseen_split() -> tuple[list[str], list[str]]:
    """(seen, unseen) class names, each in class-id order."""
    objects = class_names()[1:]
    return ([name for name in objects if name not in UNSEEN_CLASSES],
            [name for name in objects if name in UNSEEN_CLASSES])


def vocabulary() -> list[str]:
    """Every word of the word-vector file: background, colours, patterns, distractors."""
    return ["background", *COLOURS, *PATTERNS, *DISTRACTOR_WORDS]


def word_vectors_text(seed: int, word_dim: int) -> str:
    """word2vec text format: a `count dim` header, then one L2-normalised Gaussian row per word."""
    words = vocabulary()
    rng = np.random.default_rng([seed, STREAM_TAGS["word_vectors"]])
    vectors = rng.normal(0.0, 1.0, (len(words), word_dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lines = [f"{len(words)} {word_dim}"]
    lines += [word + " " + " ".join(f"{value:.6f}" for value in row)
              for word, row in zip(words, vectors)]
    return "\n".join(lines) + "\n"


def encode_label_png(label: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) uint8 label as a palette ("P") image with the VOC colour map."""
    image = Image.fromarray(label, mode="P")
    image.putpalette(voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a (H, W, 3) uint8 BGR image."""
    success, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not success:
        raise RuntimeError("OpenCV failed to encode a JPEG image")
    return data.tobytes()


def image_objects(rng: np.random.Generator, guaranteed_class: int) -> list[tuple[int, str]]:
    """(class_id, name) per object in drawing order: `guaranteed_class` first, then 1..3 more
    drawn uniformly over all object classes."""
    names = class_names()
    count = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    class_ids = [guaranteed_class] + [int(c) for c in rng.integers(1, len(names), count - 1)]
    return [(class_id, names[class_id]) for class_id in class_ids]


def guaranteed_class_order() -> list[int]:
    """Round-robin order of the class each segmentation image is sure to contain: unseen classes
    first, so any split with >= 4 images contains every unseen class."""
    names = class_names()
    unseen = [names.index(name) for name in UNSEEN_CLASSES]
    return unseen + [class_id for class_id in range(1, len(names)) if class_id not in unseen]


def _initialise_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core


def render_task(task: tuple[str, int, str, int, tuple[int, int]]) -> tuple[str, int, list[int]]:
    """Render and write one image (a worker's job). Task = (out_dir, seed, split, index,
    image_size_range). Returns (split, index, per-class pixel counts or [class_id])."""
    out_dir, seed, split, index, size_range = task
    root = Path(out_dir)
    rng = np.random.default_rng([seed, STREAM_TAGS[split], index])
    identifier = f"{split}_{index:05d}"
    if split == "pretrain":
        class_id = index % (len(class_names()) - 1) + 1
        image = render_single_object(rng, PRETRAIN_IMAGE_SIZE, class_names()[class_id])
        atomic_write_bytes(root / "pretrain" / "images" / f"{identifier}.jpg", encode_jpeg(image))
        return split, index, [class_id]
    order = guaranteed_class_order()
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    image, label = render_scene(rng, height, width,
                                image_objects(rng, order[index % len(order)]))
    atomic_write_bytes(root / "JPEGImages" / f"{identifier}.jpg", encode_jpeg(image))
    atomic_write_bytes(root / "SegmentationClass" / f"{identifier}.png", encode_label_png(label))
    return split, index, np.bincount(label.ravel(), minlength=256).tolist()


def _check_arguments(num_train: int, num_val: int, num_pretrain: int,
                     image_size_range: tuple[int, int], word_dim: int, workers: int) -> None:
    if num_train < 1 or num_val < len(UNSEEN_CLASSES) or num_pretrain < 0:
        raise ConfigError(f"shapes benchmark: num_train={num_train} must be >= 1, num_val="
                          f"{num_val} >= {len(UNSEEN_CLASSES)} (every unseen class appears in "
                          f"val), num_pretrain={num_pretrain} >= 0")
    low, high = image_size_range
    if not 32 <= low <= high:
        raise ConfigError(f"shapes benchmark: image_size_range={image_size_range} must be "
                          "(low, high) with 32 <= low <= high")
    if word_dim < 2 or workers < 0:
        raise ConfigError(f"shapes benchmark: word_dim={word_dim} must be >= 2 and workers="
                          f"{workers} >= 0")


def _run_tasks(tasks: list[tuple], workers: int) -> list[tuple[str, int, list[int]]]:
    if workers <= 1 or len(tasks) < 2:
        return [render_task(task) for task in tasks]
    # Not "fork": a process that already used OpenCV's or torch's thread pools (a test run, a
    # training run that generates the benchmark on first use) can deadlock its forked children.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_initialise_worker) as pool:
        return list(pool.imap(render_task, tasks, chunksize=16))


def generate_shapes_benchmark(out_dir: str | Path, seed: int = 0, num_train: int = 1200,
                              num_val: int = 240, num_pretrain: int = 3200,
                              image_size_range: tuple[int, int] = (96, 128), word_dim: int = 64,
                              workers: int = 2) -> dict:
    """Write the shapes benchmark into `out_dir` and return its summary (also in shapes.json).

    Deterministic for a seed whatever `workers` is: label PNGs and the word-vector file are
    byte-identical, JPEG images decode to identical arrays. Every file is written atomically, and
    `shapes.json` is removed first and written last, so an interrupted run is never taken for a
    complete benchmark (see `is_shapes_benchmark`). Files of an earlier, larger benchmark in the
    same folder are left in place but no longer listed.
    """
    _check_arguments(num_train, num_val, num_pretrain, image_size_range, word_dim, workers)
    started = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_FILE).unlink(missing_ok=True)
    names = class_names()
    seen, unseen = seen_unseen_split()
    atomic_write_text(root / "class_names.txt", "\n".join(names) + "\n")
    atomic_write_text(root / "split.yaml", f"seen: {json.dumps(seen)}\nunseen: "
                                           f"{json.dumps(unseen)}\n")
    atomic_write_text(root / "word_vectors.txt", word_vectors_text(seed, word_dim))
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "pretrain/images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    counts = {"train": num_train, "val": num_val, "pretrain": num_pretrain}
    size_range = (int(image_size_range[0]), int(image_size_range[1]))
    tasks = [(str(root), seed, split, index, size_range)
             for split, count in counts.items() for index in range(count)]
    results = _run_tasks(tasks, workers)

    pixels = {split: np.zeros(len(names), dtype=np.int64) for split in ("train", "val")}
    pretrain_labels = []
    for split, index, values in results:
        if split == "pretrain":
            pretrain_labels.append(f"pretrain_{index:05d} {values[0]}")
        else:
            pixels[split] += np.asarray(values[:len(names)], dtype=np.int64)
    for split in ("train", "val"):
        atomic_write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt",
                          "".join(f"{split}_{index:05d}\n" for index in range(counts[split])))
    atomic_write_text(root / "pretrain" / "labels.txt", "".join(f"{line}\n"
                                                                for line in pretrain_labels))
    pretrain_per_class = np.bincount([int(line.split()[1]) for line in pretrain_labels],
                                     minlength=len(names))
    summary = {
        "format": FORMAT, "seed": seed, "class_names": names, "seen": seen, "unseen": unseen,
        "counts": counts, "image_size_range": list(size_range),
        "pretrain_image_size": PRETRAIN_IMAGE_SIZE, "word_dim": word_dim,
        "vocabulary_size": len(vocabulary()),
        "pixels_per_class": {split: dict(zip(names, values.tolist()))
                             for split, values in pixels.items()},
        "pretrain_images_per_class": dict(zip(names[1:], pretrain_per_class[1:].tolist())),
        "seconds": round(time.perf_counter() - started, 2),
    }
    atomic_write_json(root / MARKER_FILE, summary)
    return summary


def is_shapes_benchmark(out_dir: str | Path) -> bool:
    """True when `out_dir` holds a completely generated shapes benchmark (its marker exists)."""
    marker = Path(out_dir) / MARKER_FILE
    try:
        summary = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("format") == FORMAT
