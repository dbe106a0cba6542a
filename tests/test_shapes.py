"""Tests of the synthetic shapes benchmark generator on a tiny benchmark (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cagnet.class_embeddings import (build_class_embeddings, embedding_transfer_statistics,
                                     import_original_pickles)
from cagnet.datasets.shapes import (COLOURS, PATTERNS, VOC_NEAREST_COSINE_RANGE,
                                    VOC_RESIDUAL_RANGE, class_names, class_token,
                                    generate_shapes_benchmark, is_shapes_benchmark,
                                    seen_unseen_split, unseen_transfer_statistics)
from cagnet.datasets.shapes_drawing import add_void_boundary, voc_palette
from cagnet.datasets.splits import read_class_names, read_split
from cagnet.errors import ConfigError, EmbeddingError

TINY = {"num_train": 12, "num_val": 6, "num_validation": 4, "num_pretrain": 32}
SMALL = {"num_train": 4, "num_val": 4, "num_validation": 0, "num_pretrain": 0}
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOC_VECTORS = SHARED_DATA / "benchmarks" / "voc12" / "cagnet" / "word_vectors"


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
    assert summary["counts"] == {"train": 12, "val": 6, "validation": 4, "pretrain": 32}
    assert len((root / "ImageSets" / "Segmentation" / "validation.txt").read_text().split()) == 4
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

    from cagnet.datasets.build import PROJECT_ROOT
    from cagnet.engine.pretrain import pretrain
    from cagnet.config import load_config

    root, _ = benchmark
    config = load_config(PROJECT_ROOT / "experiments" / "shapes.yaml", [
        f"data.root={root}", f"pretrain.corpus={root / 'pretrain'}", "pretrain.iterations=2",
        "pretrain.batch_size=4", "pretrain.image_size=32", "pretrain.include_aspp=false",
        "model.base_width=4"])
    states = []
    for run in range(2):
        pretrain(config, tmp_path / f"run{run}", show_progress=False)
        states.append(torch.load(tmp_path / f"run{run}" / "backbone_init.pt",
                                 weights_only=False)["backbone"])
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0, msg=key)


def test_pretrained_init_survives_copying_its_output_folder(benchmark: tuple[Path, dict],
                                                           tmp_path: Path, monkeypatch) -> None:
    """`cagnet demo` / compare keep the corpus in <out>/shapes and the init in <out>/pretrain: a
    copy of <out> (new paths, new modification times) reuses the copy's init, trains nothing."""
    import shutil

    from cagnet.config import load_config
    from cagnet.datasets.build import PROJECT_ROOT
    from cagnet.engine import pretrain as pretraining

    root, _ = benchmark
    out = tmp_path / "out"
    shutil.copytree(root / "pretrain", out / "shapes" / "pretrain")

    def config(folder: Path):
        return load_config(PROJECT_ROOT / "experiments" / "shapes.yaml", [
            f"data.root={root}", f"pretrain.corpus={folder / 'shapes' / 'pretrain'}",
            "pretrain.iterations=2", "pretrain.batch_size=4", "pretrain.image_size=32",
            "pretrain.include_aspp=false", "model.base_width=4"])

    first = pretraining.pretrained_init(config(out), out / "pretrain", show_progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy)
    monkeypatch.setattr(pretraining, "pretrain", lambda *args, **kwargs: pytest.fail("re-ran"))
    assert pretraining.pretrained_init(config(copy), copy / "pretrain", show_progress=False) \
        == copy / "pretrain" / first.name
    assert pretraining.pretrained_init(config(out), out / "pretrain", show_progress=False) == first


def test_embedding_transfer_statistics_by_hand() -> None:
    matrix = np.array([[5.0, 5.0, 5.0],   # row 0, background: not in the seen span
                       [2.0, 0.0, 0.0],   # seen
                       [0.0, 1.0, 0.0],   # seen
                       [1.0, 1.0, 1.0],   # unseen: (1,1,1)/sqrt(3), off the span by e3/sqrt(3)
                       [3.0, 4.0, 0.0]])  # unseen: inside the span
    first, second = embedding_transfer_statistics(matrix, [1, 2], [3, 4])
    assert first["row"] == 3 and second["row"] == 4
    assert first["residual"] == pytest.approx(1 / np.sqrt(3))
    assert first["nearest_seen"] == 1 and first["cosine"] == pytest.approx(1 / np.sqrt(3))  # tie
    assert second["residual"] == pytest.approx(0.0, abs=1e-12)
    assert second["nearest_seen"] == 2 and second["cosine"] == pytest.approx(0.8)
    with_background = embedding_transfer_statistics(matrix, [0, 1, 2], [3])[0]
    assert with_background["residual"] == pytest.approx(0.0, abs=1e-12)
    assert with_background["nearest_seen"] == 0 and with_background["cosine"] == pytest.approx(1)
    with pytest.raises(EmbeddingError, match="no seen rows"):
        embedding_transfer_statistics(matrix, [], [3])
    with pytest.raises(EmbeddingError, match="outside"):
        embedding_transfer_statistics(matrix, [1], [5])


@pytest.fixture(scope="module", params=["class", "compositional"])
def small_benchmark(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp(f"shapes_{request.param}")
    summary = generate_shapes_benchmark(root, seed=0, word_vectors=request.param, **SMALL)
    return root, summary


def inside(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def test_word_vector_statistics(small_benchmark: tuple[Path, dict]) -> None:
    root, summary = small_benchmark
    kind = summary["word_vectors"]
    assert is_shapes_benchmark(root) and summary["format"] == "cagnet-shapes-v4"
    names = class_names()
    matrix, metadata = build_class_embeddings(names, [("word2vec", str(root / "word_vectors.txt"))])
    lookups = metadata["sources"][0]["lookups"]
    seen, unseen = seen_unseen_split()
    seen_rows = [names.index(name) for name in seen]
    statistics = unseen_transfer_statistics(root)
    assert [entry["name"] for entry in statistics] == unseen
    for entry in statistics:
        row = names.index(entry["name"])
        words = set(entry["name"].split())
        cosines = {name: float(matrix[names.index(name)] @ matrix[row]) for name in seen}
        sharing = [cosines[name] for name in seen if words & set(name.split())]
        others = [cosines[name] for name in seen if not words & set(name.split())]
        assert len(sharing) == len(others) == 6
        assert entry["cosine"] == pytest.approx(max(cosines.values()), abs=1e-6)
        if kind == "class":
            # the attributes carry the transfer: the 6 seen classes sharing the pattern or the
            # colour are the nearest (the compositional words, independent Gaussian rows in
            # 64-d, do not even guarantee that)
            assert min(sharing) > max(others) + 0.2, entry
            assert words & set(entry["nearest_seen"].split())
            assert lookups[row] == [class_token(entry["name"])]  # found whole: "striped_red"
            assert inside(entry["residual"], VOC_RESIDUAL_RANGE), entry
            assert inside(entry["cosine"], VOC_NEAREST_COSINE_RANGE), entry
        else:
            assert lookups[row] == entry["name"].split()  # the mean of two words
            assert entry["residual"] < 1e-3, entry  # in the span of the seen embeddings
            assert entry["cosine"] > VOC_NEAREST_COSINE_RANGE[1]
    again = embedding_transfer_statistics(matrix, seen_rows, [names.index(n) for n in unseen])
    assert [e["residual"] for e in again] == [e["residual"] for e in statistics]


def test_word_vector_kinds(small_benchmark: tuple[Path, dict], tmp_path: Path) -> None:
    from gensim.models import KeyedVectors

    root, summary = small_benchmark
    kind = summary["word_vectors"]
    vectors = KeyedVectors.load_word2vec_format(str(root / "word_vectors.txt"), binary=False)
    tokens = {class_token(name) for name in class_names()[1:]}
    assert (tokens <= set(vectors.key_to_index)) == (kind == "class")
    assert not tokens & set(vectors.key_to_index) or kind == "class"
    assert len(vectors.key_to_index) == summary["vocabulary_size"]
    assert summary["attribute_weight"] == (0.6 if kind == "class" else 1.0)
    np.testing.assert_allclose(np.linalg.norm(vectors.vectors, axis=1), 1.0, atol=1e-5)
    other = generate_shapes_benchmark(tmp_path / "other", seed=0, word_vectors=(
        "compositional" if kind == "class" else "class"), **SMALL)
    assert other["word_vectors"] != kind
    for label in ("SegmentationClass/val_00000.png", "SegmentationClass/train_00003.png"):
        assert (tmp_path / "other" / label).read_bytes() == (root / label).read_bytes()


def test_word_vector_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="word_vectors"):
        generate_shapes_benchmark(tmp_path, word_vectors="mean", **SMALL)
    with pytest.raises(ConfigError, match="word_dim=16"):
        generate_shapes_benchmark(tmp_path, word_dim=16, **SMALL)
    generate_shapes_benchmark(tmp_path, word_dim=16, word_vectors="compositional", **SMALL)
    assert is_shapes_benchmark(tmp_path)


def test_data_shapes_command_prints_statistics(tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from cagnet.cli import main

    assert main(["data", "shapes", "--out", str(tmp_path), "--num-train", "4", "--num-val", "4",
                 "--num-pretrain", "0", "--word-vectors", "compositional"]) == 0
    output = capsys.readouterr().out
    assert "compositional word vectors" in output
    for name in seen_unseen_split()[1]:
        assert f"{name} " in output
    assert output.count("residual 0.000") == 4


@pytest.mark.skipif(not VOC_VECTORS.is_dir(), reason=f"no VOC word vectors in {VOC_VECTORS}")
def test_voc_statistics_are_the_reference_ranges() -> None:
    """Pascal-VOC fastnvec (fastText ‖ word2vec), seen = ids 1..15 (background is no class)."""
    matrix, _ = import_original_pickles([VOC_VECTORS / "fasttext.pkl",
                                         VOC_VECTORS / "word2vec.pkl"])
    statistics = embedding_transfer_statistics(matrix, range(1, 16), range(16, 21))
    residuals = [round(entry["residual"], 2) for entry in statistics]
    cosines = [round(entry["cosine"], 2) for entry in statistics]
    assert (min(residuals), max(residuals)) == VOC_RESIDUAL_RANGE
    assert (min(cosines), max(cosines)) == VOC_NEAREST_COSINE_RANGE
    # sheep -> cow, sofa -> chair, train -> bus: real nearest neighbours
    assert [entry["nearest_seen"] for entry in statistics][1:4] == [10, 9, 6]


def test_a_folder_of_an_older_format_is_regenerated_not_reused(tmp_path: Path) -> None:
    (tmp_path / "shapes.json").write_text('{"format": "cagnet-shapes-v3"}')  # no validation.txt
    assert not is_shapes_benchmark(tmp_path)
