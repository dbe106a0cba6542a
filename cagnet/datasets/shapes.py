"""The built-in synthetic zero-shot benchmark "shapes", written as a Pascal-VOC style folder.

16 classes "pattern colour" (4 surface patterns x 4 colours; the outline is a nuisance factor),
4 unseen forming a Latin square: each of their patterns and colours occurs in 3 seen classes.
`out_dir` gets JPEGImages/, SegmentationClass/ (VOC palette PNGs, 255 void), ImageSets/
Segmentation/{train, val (the test list), validation}.txt, class_names.txt, split.yaml,
word_vectors.txt, pretrain/ (64x64 single-object images of ALL classes, labels.txt) and last
shapes.json. Images draw their classes over all 16 (unseen pixels are ignored in training, as in
the real benchmarks); each is a function of (seed, split, index) alone.
"""

import json
import multiprocessing
import time
from pathlib import Path

import cv2
import numpy as np

from cagnet.class_embeddings import (build_class_embeddings, embedding_transfer_statistics,
                                     read_sidecar, save_class_embeddings, sha256_file)
from cagnet.datasets.label_sources import encode_index_png
from cagnet.datasets.shapes_drawing import render_scene, render_single_object
from cagnet.errors import ConfigError
from cagnet.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

# v4: the validation.txt list; an older folder (without it) is regenerated, not reused
FORMAT = "cagnet-shapes-v4"
COLOURS = ("red", "green", "blue", "yellow")
PATTERNS = ("plain", "striped", "dotted", "checkered")
UNSEEN_CLASSES = ("striped red", "dotted green", "checkered blue", "plain yellow")
# Words no class uses, so the file looks like a real model's vocabulary.
DISTRACTOR_WORDS = ("orange", "purple", "pink", "brown", "grey", "black", "white", "cyan",
                    "beige", "magenta", "circle", "square", "triangle", "star", "hexagon",
                    "oval", "cross", "heart", "spotted", "shiny", "rough", "wavy")
PRETRAIN_IMAGE_SIZE = 64
JPEG_QUALITY = 92
MARKER_FILE = "shapes.json"
OBJECTS_PER_IMAGE = (2, 3)
# Seed-sequence tags: every random stream is keyed by (seed, tag, index).
STREAM_TAGS = {"train": 1, "val": 2, "pretrain": 3, "word_vectors": 4, "validation": 5}
SEGMENTATION_SPLITS = ("train", "val", "validation")
WORD_VECTOR_KINDS = ("class", "compositional")
# Share of a class vector's squared norm carried by its pattern + colour words. An unseen class
# then has nearest-seen cosine ATTRIBUTE_WEIGHT / 2 and a residual that falls as it grows: both
# are in VOC's ranges for 0.52 < ATTRIBUTE_WEIGHT < 0.645; 0.6 leaves both lower bounds the same
# margin (cosine 0.30 vs 0.26, residual 0.78 vs 0.74).
ATTRIBUTE_WEIGHT = 0.6
# Pascal-VOC fastnvec with its last 5 classes unseen: the least-squares residual of an unseen
# embedding on the span of the 15 seen ones, and its cosine to the nearest seen class.
VOC_RESIDUAL_RANGE = (0.74, 0.94)
VOC_NEAREST_COSINE_RANGE = (0.26, 0.60)


def class_names() -> list[str]:
    """Line i = label id i: `background`, then "pattern colour" names, pattern-major."""
    return ["background"] + [f"{pattern} {colour}" for pattern in PATTERNS for colour in COLOURS]


def seen_unseen_split() -> tuple[list[str], list[str]]:
    """(seen, unseen) class names, each in class-id order."""
    objects = class_names()[1:]
    return ([name for name in objects if name not in UNSEEN_CLASSES],
            [name for name in objects if name in UNSEEN_CLASSES])


def class_token(name: str) -> str:
    """The vocabulary entry of a class name, found whole by `build_class_embeddings`."""
    return "_".join(name.split())


def _check_word_vectors(word_vectors: str) -> None:
    if word_vectors not in WORD_VECTOR_KINDS:
        raise ConfigError(f"shapes benchmark: word_vectors='{word_vectors}' must be one of "
                          f"{', '.join(WORD_VECTOR_KINDS)}")


def vocabulary(word_vectors: str = "class") -> list[str]:
    """The words of the word-vector file, in order ("class" adds one token per class)."""
    _check_word_vectors(word_vectors)
    words = ["background", *COLOURS, *PATTERNS, *DISTRACTOR_WORDS]
    if word_vectors == "class":
        words += [class_token(name) for name in class_names()[1:]]
    return words


def _orthonormal_rows(rows: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of the rows, in order (QR with the signs fixed, so the result is unique)."""
    q, r = np.linalg.qr(rows.T)
    return (q * np.where(np.diag(r) < 0, -1.0, 1.0)).T


def word_vector_matrix(seed: int, word_dim: int, word_vectors: str = "class"
                       ) -> tuple[list[str], np.ndarray]:
    """`(words, (len(words), word_dim) float64 unit rows)` of the word-vector file.

    Every single word gets an L2-normalised Gaussian row. "compositional" stops there: a class
    embedding is then the mean of two words and lies in the span of the seen ones, so a linear
    map scores unseen classes for free, which real word embeddings do not allow. "class" (the
    default) adds one token per class (`striped_red`, found whole by `build_class_embeddings`):
    with the 8 pattern / colour rows w and 16 seeded class parts g orthonormalised together
    (`word_dim >= 24`), v = sqrt(ATTRIBUTE_WEIGHT) * (w(pattern) + w(colour)) / sqrt(2)
    + sqrt(1 - ATTRIBUTE_WEIGHT) * g(class), unit-norm; an unseen class is at cosine 0.30 from
    the 6 seen classes sharing an attribute, residual 0.78 on the seen span: inside VOC's ranges.
    """
    _check_word_vectors(word_vectors)
    words = vocabulary("compositional")
    rng = np.random.default_rng([seed, STREAM_TAGS["word_vectors"]])
    vectors = rng.normal(0.0, 1.0, (len(words), word_dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if word_vectors == "compositional":
        return words, vectors
    objects = class_names()[1:]
    attribute_rows = [words.index(word) for word in (*PATTERNS, *COLOURS)]
    own = rng.normal(0.0, 1.0, (len(objects), word_dim))
    frame = _orthonormal_rows(np.concatenate([vectors[attribute_rows], own]))
    vectors[attribute_rows] = frame[:len(attribute_rows)]
    own = frame[len(attribute_rows):]
    rows = []
    for index, name in enumerate(objects):
        pattern, colour = name.split()
        attributes = (vectors[words.index(pattern)] + vectors[words.index(colour)]) / np.sqrt(2)
        rows.append(np.sqrt(ATTRIBUTE_WEIGHT) * attributes
                    + np.sqrt(1.0 - ATTRIBUTE_WEIGHT) * own[index])
    return (words + [class_token(name) for name in objects],
            np.concatenate([vectors, np.stack(rows)]))


def word_vectors_text(seed: int, word_dim: int, word_vectors: str = "class") -> str:
    """word2vec text: a `count dim` header, then one row per word, 6 decimals."""
    words, vectors = word_vector_matrix(seed, word_dim, word_vectors)
    lines = [f"{len(words)} {word_dim}"]
    lines += [word + " " + " ".join(f"{value:.6f}" for value in row)
              for word, row in zip(words, vectors)]
    return "\n".join(lines) + "\n"


def unseen_transfer_statistics(out_dir: str | Path) -> list[dict]:
    """`embedding_transfer_statistics` of the embeddings built from `out_dir/word_vectors.txt`
    as for training (background excluded): per unseen class, `name`, `residual`, `nearest_seen`
    (a name) and `cosine`."""
    names = class_names()
    seen, unseen = seen_unseen_split()
    source = Path(out_dir) / "word_vectors.txt"
    matrix, _ = build_class_embeddings(names, [("word2vec", str(source))])
    statistics = embedding_transfer_statistics(matrix, [names.index(name) for name in seen],
                                               [names.index(name) for name in unseen])
    return [{"name": names[entry["row"]], "residual": entry["residual"],
             "nearest_seen": names[entry["nearest_seen"]], "cosine": entry["cosine"]}
            for entry in statistics]


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a (H, W, 3) uint8 BGR image."""
    success, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not success:
        raise RuntimeError("OpenCV failed to encode a JPEG image")
    return data.tobytes()


def image_objects(rng: np.random.Generator, guaranteed_class: int) -> list[tuple[int, str]]:
    """(class_id, name) per object in drawing order: `guaranteed_class`, then 1 or 2 at random."""
    names = class_names()
    count = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    class_ids = [guaranteed_class] + [int(c) for c in rng.integers(1, len(names), count - 1)]
    return [(class_id, names[class_id]) for class_id in class_ids]


def guaranteed_class_order() -> list[int]:
    """Round-robin order of the class each image is sure to contain: unseen classes first, so
    any split with >= 4 images contains every unseen class."""
    names = class_names()
    unseen = [names.index(name) for name in UNSEEN_CLASSES]
    return unseen + [class_id for class_id in range(1, len(names)) if class_id not in unseen]


def _initialise_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core


def render_task(task: tuple[str, int, str, int, tuple[int, int]]) -> tuple[str, int, list[int]]:
    """Render and write one image: task (out_dir, seed, split, index, image_size_range) ->
    (split, index, per-class pixel counts or [class_id])."""
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
    image, label = render_scene(rng, height, width, image_objects(rng, order[index % len(order)]))
    atomic_write_bytes(root / "JPEGImages" / f"{identifier}.jpg", encode_jpeg(image))
    atomic_write_bytes(root / "SegmentationClass" / f"{identifier}.png", encode_index_png(label))
    return split, index, np.bincount(label.ravel(), minlength=256).tolist()


def _check_arguments(num_train: int, num_val: int, num_pretrain: int,
                     image_size_range: tuple[int, int], word_dim: int, workers: int,
                     word_vectors: str) -> None:
    _check_word_vectors(word_vectors)
    orthonormal = len(PATTERNS) + len(COLOURS) + len(class_names()) - 1
    if word_vectors == "class" and word_dim < orthonormal:
        raise ConfigError(f"shapes benchmark: word_dim={word_dim} must be >= {orthonormal} for "
                          f"word_vectors='class' (orthonormal attribute and class vectors)")
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
                              num_validation: int = 120,
                              image_size_range: tuple[int, int] = (96, 128), word_dim: int = 64,
                              workers: int = 2, word_vectors: str = "class") -> dict:
    """Write the shapes benchmark into `out_dir` and return its summary (also in shapes.json).

    Deterministic for a seed whatever `workers` is. `shapes.json` is removed first and written
    last, so an interrupted run is never taken for a complete benchmark; files of an earlier,
    larger benchmark are left in place but no longer listed. The images do not depend on
    `word_vectors` (one of `WORD_VECTOR_KINDS`).
    """
    _check_arguments(num_train, num_val, num_pretrain, image_size_range, word_dim, workers,
                     word_vectors)
    started = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_FILE).unlink(missing_ok=True)
    names = class_names()
    seen, unseen = seen_unseen_split()
    atomic_write_text(root / "class_names.txt", "\n".join(names) + "\n")
    atomic_write_text(root / "split.yaml",
                      f"seen: {json.dumps(seen)}\nunseen: {json.dumps(unseen)}\n")
    atomic_write_text(root / "word_vectors.txt", word_vectors_text(seed, word_dim, word_vectors))
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "pretrain/images"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    counts = {"train": num_train, "val": num_val, "validation": num_validation,
              "pretrain": num_pretrain}
    size_range = (int(image_size_range[0]), int(image_size_range[1]))
    tasks = [(str(root), seed, split, index, size_range)
             for split, count in counts.items() for index in range(count)]
    results = _run_tasks(tasks, workers)
    pixels = {split: np.zeros(len(names), dtype=np.int64) for split in SEGMENTATION_SPLITS}
    pretrain_labels = []
    for split, index, values in results:
        if split == "pretrain":
            pretrain_labels.append(f"pretrain_{index:05d} {values[0]}")
        else:
            pixels[split] += np.asarray(values[:len(names)], dtype=np.int64)
    for split in SEGMENTATION_SPLITS:
        atomic_write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt",
                          "".join(f"{split}_{index:05d}\n" for index in range(counts[split])))
    atomic_write_text(root / "pretrain" / "labels.txt",
                      "".join(f"{line}\n" for line in pretrain_labels))
    pretrain_per_class = np.bincount([int(line.split()[1]) for line in pretrain_labels],
                                     minlength=len(names))
    summary = {"format": FORMAT, "seed": seed, "class_names": names, "seen": seen,
               "unseen": unseen, "counts": counts, "image_size_range": list(size_range),
               "pretrain_image_size": PRETRAIN_IMAGE_SIZE, "word_dim": word_dim,
               "word_vectors": word_vectors,
               "attribute_weight": ATTRIBUTE_WEIGHT if word_vectors == "class" else 1.0,
               "vocabulary_size": len(vocabulary(word_vectors)),
               "pixels_per_class": {split: dict(zip(names, values.tolist()))
                                    for split, values in pixels.items()},
               "pretrain_images_per_class": dict(zip(names[1:], pretrain_per_class[1:].tolist())),
               "seconds": round(time.perf_counter() - started, 2)}
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


def prepare_shapes(data_dir: str | Path, seed: int = 0) -> Path:
    """Generate the benchmark (unless complete) and its class embeddings as `cagnet embed` would
    (rebuilt when made from another `word_vectors.txt`). Returns the embedding file."""
    data_dir = Path(data_dir)
    if not is_shapes_benchmark(data_dir):
        generate_shapes_benchmark(data_dir, seed=seed)
    embeddings, vectors = data_dir / "class_embeddings.npy", data_dir / "word_vectors.txt"
    recorded = [source.get("sha256") for source in read_sidecar(embeddings).get("sources", [])] \
        if embeddings.is_file() else []
    if recorded != [sha256_file(vectors)]:
        matrix, metadata = build_class_embeddings(class_names(), [("word2vec", str(vectors))])
        save_class_embeddings(embeddings, matrix, metadata)
    return embeddings
