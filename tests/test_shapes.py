"""Tests of the synthetic shapes benchmark generator on a tiny benchmark (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cagnet.datasets.shapes import (COLOURS, PATTERNS, class_names, generate_shapes_benchmark,
                                    is_shapes_benchmark)
from cagnet.datasets.shapes_drawing import add_void_boundary, voc_palette
from cagnet.datasets.splits import read_class_names, read_split
from cagnet.errors import ConfigError

TINY = {"num_train": 12, "num_val": 6, "num_pretrain": 32}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shapes") / "seed0"
    assert not is_shapes_benchmark(root)
    summary = generate_shapes_benchmark(root, seed=0, **TINY)
    return root, summary


def segmentation_ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def read_mask(root: Path, identifier: str) -> np.ndarray:
    return np.array(Image.open(root / "SegmentationClass" / f"{identifier}.png"))


def test_layout(benchmark: tuple[Path, dict]) -> None:
    root, summary = benchmark
    assert segmentation_ids(root, "train") == [f"train_{i:05d}" for i in range(12)]
    assert segmentation_ids(root, "val") == [f"val_{i:05d}" for i in range(6)]
    for identifier in segmentation_ids(root, "train") + segmentation_ids(root, "val"):
        assert (root / "JPEGImages" / f"{identifier}.jpg").is_file()
        assert (root / "SegmentationClass" / f"{identifier}.png").is_file()
    names = read_class_names(root / "class_names.txt")
    assert names == class_names() == summary["class_names"]
    assert names[0] == "background" and len(names) == 17
    assert names[1] == "plain red" and names[16] == "checkered yellow"  # pattern-major ids
    assert summary["counts"] == {"train": 12, "val": 6, "pretrain": 32}
    assert not list(root.rglob("*.tmp")), "temporary files left behind"


def test_masks_are_voc_palette_pngs_matching_images(benchmark: tuple[Path, dict]) -> None:
    root, _ = benchmark
    palette = voc_palette()
    assert palette[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    assert palette[-3:] == [224, 224, 192]
    for identifier in segmentation_ids(root, "train") + segmentation_ids(root, "val"):
        with Image.open(root / "SegmentationClass" / f"{identifier}.png") as mask:
            assert mask.mode == "P"
            assert mask.getpalette()[:768] == palette
            values = np.array(mask)
        assert set(np.unique(values).tolist()) <= set(range(17)) | {255}
        assert (values > 0).any() and (values == 0).any()
        image = cv2.imread(str(root / "JPEGImages" / f"{identifier}.jpg"))
        assert image.shape == values.shape + (3,)
        assert all(96 <= side <= 128 for side in values.shape)


def test_void_boundary_is_thin() -> None:
    label = np.zeros((8, 8), dtype=np.uint8)
    label[2:6, 2:6] = 3
    result = add_void_boundary(label)
    assert (result[3:5, 3:5] == 3).all()  # interior kept
    assert (result[2, 2:6] == 255).all() and (result[2:6, 2] == 255).all()  # 1-px ring
    assert (result[label == 0] == 0).all()  # background side untouched


def test_split_is_a_latin_square(benchmark: tuple[Path, dict]) -> None:
    root, summary = benchmark
    names = read_class_names(root / "class_names.txt")
    split = read_split(root / "split.yaml", names)
    seen = [names[i] for i in split.seen_ids]
    unseen = [names[i] for i in split.unseen_ids]
    assert len(seen) == 12 and len(unseen) == 4 and not set(seen) & set(unseen)
    assert sorted(seen + unseen) == sorted(names[1:])
    assert (seen, unseen) == (summary["seen"], summary["unseen"])
    seen_patterns = [name.split()[0] for name in seen]
    seen_colours = [name.split()[1] for name in seen]
    for name in unseen:
        pattern, colour = name.split()
        assert seen_colours.count(colour) == 3 and seen_patterns.count(pattern) == 3
    assert sorted(name.split()[0] for name in unseen) == sorted(PATTERNS)
    assert sorted(name.split()[1] for name in unseen) == sorted(COLOURS)


def test_unseen_objects_in_train_and_val(benchmark: tuple[Path, dict]) -> None:
    root, summary = benchmark
    unseen_ids = [class_names().index(name) for name in summary["unseen"]]
    for split in ("train", "val"):
        present = set()
        for identifier in segmentation_ids(root, split):
            present |= set(np.unique(read_mask(root, identifier)).tolist())
        assert set(unseen_ids) <= present, split
        assert all(summary["pixels_per_class"][split][name] > 0 for name in summary["unseen"])


def test_word_vectors_load_with_gensim(benchmark: tuple[Path, dict]) -> None:
    from gensim.models import KeyedVectors

    root, _ = benchmark
    vectors = KeyedVectors.load_word2vec_format(str(root / "word_vectors.txt"), binary=False)
    words = {word for name in class_names() for word in name.split()}
    assert words <= set(vectors.key_to_index)
    assert len(vectors.key_to_index) >= len(words) + 20  # distractor words
    assert vectors.vector_size == 64
    norms = np.linalg.norm(vectors.vectors, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_pretrain_corpus_covers_every_class(benchmark: tuple[Path, dict]) -> None:
    root, _ = benchmark
    lines = (root / "pretrain" / "labels.txt").read_text().splitlines()
    assert len(lines) == 32
    labels = [int(line.split()[1]) for line in lines]
    assert np.bincount(labels, minlength=17)[1:].tolist() == [2] * 16  # balanced
    for line in lines[:4]:
        image = cv2.imread(str(root / "pretrain" / "images" / f"{line.split()[0]}.jpg"))
        assert image.shape == (64, 64, 3)


def test_deterministic_for_a_seed_whatever_the_workers(benchmark: tuple[Path, dict],
                                                       tmp_path: Path) -> None:
    root, _ = benchmark
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate_shapes_benchmark(again, seed=0, workers=1, **TINY)
    generate_shapes_benchmark(other, seed=1, workers=1, **TINY)
    vectors = (root / "word_vectors.txt").read_bytes()
    assert (again / "word_vectors.txt").read_bytes() == vectors
    assert (other / "word_vectors.txt").read_bytes() != vectors
    differing = 0
    for identifier in segmentation_ids(root, "train") + segmentation_ids(root, "val"):
        png = f"SegmentationClass/{identifier}.png"
        assert (again / png).read_bytes() == (root / png).read_bytes()
        jpeg = f"JPEGImages/{identifier}.jpg"
        np.testing.assert_array_equal(cv2.imread(str(again / jpeg)), cv2.imread(str(root / jpeg)))
        differing += (other / png).read_bytes() != (root / png).read_bytes()
    assert differing > 0
    pretrain = "pretrain/images/pretrain_00005.jpg"
    np.testing.assert_array_equal(cv2.imread(str(again / pretrain)),
                                  cv2.imread(str(root / pretrain)))


def test_completion_marker(benchmark: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = benchmark
    assert is_shapes_benchmark(root)
    assert summary["seed"] == 0 and summary["seconds"] >= 0
    assert not is_shapes_benchmark(tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "shapes.json").write_text('{"format": "cagnet-sha')  # truncated marker
    assert not is_shapes_benchmark(partial)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_val"):
        generate_shapes_benchmark(tmp_path, num_train=4, num_val=2, num_pretrain=0)
    with pytest.raises(ConfigError, match="image_size_range"):
        generate_shapes_benchmark(tmp_path, image_size_range=(128, 96))
    assert not is_shapes_benchmark(tmp_path)


def test_pretraining_is_reproducible(benchmark: tuple[Path, dict], tmp_path: Path) -> None:
    """Same seed, same corpus -> the same init weights (the initial weights are seeded too)."""
    import torch

    from cagnet.builders import PROJECT_ROOT, pretrain_from_config
    from cagnet.config import load_config

    root, _ = benchmark
    config = load_config(PROJECT_ROOT / "experiments" / "shapes.yaml", [
        f"data.root={root}", f"pretrain.corpus={root / 'pretrain'}", "pretrain.iterations=2",
        "pretrain.batch_size=4", "pretrain.image_size=32", "pretrain.include_aspp=false",
        "model.base_width=4"])
    states = []
    for run in range(2):
        pretrain_from_config(config, tmp_path / f"init{run}.pt", show_progress=False)
        states.append(torch.load(tmp_path / f"init{run}.pt", weights_only=False)["backbone"])
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0, msg=key)
