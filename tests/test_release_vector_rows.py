"""bench/rows_from_release_vectors.py: class rows picked by name (or --map) from the original
release's pickles, normalised as `cagnet embed --import-pkl` does."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from cagnet.class_embeddings import load_class_embeddings

REPOSITORY = Path(__file__).resolve().parents[1]
COCOSTUFF = REPOSITORY.parent / "shared/data/benchmarks/cocostuff/cagnet"


@pytest.fixture
def rows(monkeypatch):
    monkeypatch.syspath_prepend(str(REPOSITORY / "bench"))
    import rows_from_release_vectors
    return rows_from_release_vectors


def _release(tmp_path: Path) -> list[str]:
    first = np.array([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 5.0]])
    second = np.array([[0, 1.0], [1.0, 0], [1.0, 1.0]])
    for name, array in (("fasttext.pkl", first), ("word2vec.pkl", second)):
        (tmp_path / name).write_bytes(pickle.dumps(array))
    (tmp_path / "labels.txt").write_text("0\tperson\n1\tsky-other\n2\tcow\n")
    (tmp_path / "class_names.txt").write_text("cow\nsky\nface\n")
    return ["--class-names", str(tmp_path / "class_names.txt"), "--pickles",
            str(tmp_path / "fasttext.pkl"), str(tmp_path / "word2vec.pkl"),
            "--release-names", str(tmp_path / "labels.txt")]


def test_rows_by_name_and_mapping(rows, tmp_path: Path) -> None:
    out = tmp_path / "out.npy"
    rows.main(_release(tmp_path) + ["--map", "sky=sky-other", "--map", "face=person",
                                    "--out", str(out)])
    matrix = np.load(out)
    half = np.sqrt(0.5)
    # cow: (0, 0, 1) ++ (0.71, 0.71), normalised again; sky: (0, 1, 0) ++ (1, 0); face: person.
    np.testing.assert_allclose(matrix, [[0, 0, half, 0.5, 0.5], [0, half, 0, half, 0],
                                        [half, 0, 0, 0, half]], atol=1e-6)
    _, sidecar = load_class_embeddings(out, class_names=["cow", "sky", "face"])
    assert sidecar["rows_by_name"] == {"cow": "cow", "sky": "sky-other", "face": "person"}


def test_unmatched_names_and_bad_maps_are_named(rows, tmp_path: Path) -> None:
    arguments = _release(tmp_path) + ["--out", str(tmp_path / "out.npy")]
    with pytest.raises(SystemExit, match="no release row for 'sky', 'face'"):
        rows.main(arguments)
    with pytest.raises(SystemExit, match=r"not in .*class_names.txt"):
        rows.main(arguments + ["--map", "horse=person"])
    with pytest.raises(SystemExit, match="expected NAME=RELEASE_NAME"):
        rows.main(arguments + ["--map", "sky"])
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.skipif(not COCOSTUFF.is_dir(), reason="../shared/data is not beside the repository")
def test_the_release_cocostuff_rows_are_the_imported_rows(rows, tmp_path: Path) -> None:
    from cagnet.class_embeddings import import_original_pickles

    pickles = [str(COCOSTUFF / "word_vectors" / name) for name in ("fasttext.pkl",
                                                                  "word2vec.pkl")]
    (tmp_path / "names.txt").write_text("cow\nboat\nsky\n")
    out = tmp_path / "out.npy"
    rows.main(["--class-names", str(tmp_path / "names.txt"), "--pickles", *pickles,
               "--release-names", str(COCOSTUFF / "labels_refined.txt"),
               "--map", "sky=sky-other", "--out", str(out)])
    imported, _ = import_original_pickles(pickles)
    names = rows.read_release_names(COCOSTUFF / "labels_refined.txt")
    expected = imported[[names.index("cow"), names.index("boat"), names.index("sky-other")]]
    np.testing.assert_array_equal(np.load(out), expected)
    assert np.load(out).shape == (3, 600)
