"""Property-based tests: random bytes, random structures and random override strings fed to
every reader of user files and to the config parser. Each may succeed or raise one of the
project's own errors (a `CagnetError` naming the file or key); anything else is a crash."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cagnet.class_embeddings import load_class_embeddings
from cagnet.config import config_from_dict, config_to_dict, load_config
from cagnet.datasets.images import read_image_bgr, read_label
from cagnet.datasets.splits import read_class_names, read_id_list, read_split
from cagnet.engine.checkpoint import FORMAT, load_checkpoint
from cagnet.datasets.corpus import read_corpus
from cagnet.errors import CagnetError
from cagnet.utils.safe_pickle import load_numpy_pickle

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
NAMES = ["background", "cat", "dog", "sheep"]
MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"BM", b"P6\n", b"GIF89a",
         b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"\x80\x04", b"\x80\x02"]

random_files = st.builds(lambda magic, body: magic + body, st.sampled_from(MAGIC),
                         st.binary(max_size=400))
texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=120)
scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
plain = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(texts, st.integers()), inner,
                                                 max_size=4)), max_leaves=12)


def _only_project_errors(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except CagnetError as error:
        assert str(error)
        return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=random_files)
def test_image_and_mask_readers(folder: Path, data: bytes):
    image = _only_project_errors(read_image_bgr, _file(folder, "image.jpg", data))
    assert image is None or (image.ndim == 3 and image.dtype == np.uint8)
    mask = _only_project_errors(read_label, _file(folder, "mask.png", data))
    assert mask is None or (mask.ndim == 2 and mask.dtype == np.uint8)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), texts.map(lambda t: t.encode("utf-8"))))
def test_text_list_readers(folder: Path, data: bytes):
    names = _only_project_errors(read_class_names, _file(folder, "names.txt", data))
    assert names is None or (names and all(name.strip() == name for name in names))
    ids = _only_project_errors(read_id_list, _file(folder, "list.txt", data))
    assert ids is None or all(".." not in Path(i).parts and not Path(i).is_absolute()
                              for i in ids)
    _only_project_errors(read_split, _file(folder, "split.yaml", data), NAMES)
    corpus = folder / "corpus"
    corpus.mkdir(exist_ok=True)
    _file(corpus, "labels.txt", data)
    _only_project_errors(read_corpus, corpus, 8, [0.0, 0.0, 0.0])


@FUZZ
@given(content=plain)
def test_split_reader_on_random_yaml(folder: Path, content):
    try:
        text = yaml.safe_dump(content)
    except (yaml.YAMLError, RecursionError):
        return
    split = _only_project_errors(read_split, _file(folder, "split.yaml", text.encode()), NAMES)
    assert split is None or (split.seen_ids and not set(split.seen_ids) & set(split.unseen_ids))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _filled(shape: tuple[int, ...], dtype: str, fill: float) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.full(shape, fill).astype(dtype)


arrays = st.builds(
    _filled,
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
    st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "float16"]),
    st.floats(allow_nan=True, allow_infinity=True, width=16))


@FUZZ
@given(data=random_files, array=arrays, cut=st.integers(0, 200), sidecar=st.binary(max_size=80))
def test_embedding_loader(folder: Path, data: bytes, array: np.ndarray, cut: int,
                          sidecar: bytes):
    path = _file(folder, "embeddings.npy", data)
    (folder / "embeddings.json").unlink(missing_ok=True)
    _only_project_errors(load_class_embeddings, path, expected_rows=4)
    whole = _npy_bytes(array)
    for content in (whole, whole[:cut]):
        _file(folder, "embeddings.npy", content)
        result = _only_project_errors(load_class_embeddings, path, class_names=NAMES)
        assert result is None or (result[0].shape[0] == 4 and np.isfinite(result[0]).all())
    _file(folder, "embeddings.json", sidecar)
    _only_project_errors(load_class_embeddings, path, class_names=NAMES)


@FUZZ
@given(data=random_files, content=plain, protocol=st.integers(0, 5))
def test_safe_pickle(folder: Path, data: bytes, content, protocol: int):
    array = _only_project_errors(load_numpy_pickle, _file(folder, "vectors.pkl", data))
    assert array is None or isinstance(array, np.ndarray)
    pickled = pickle.dumps(content, protocol=protocol)
    assert _only_project_errors(load_numpy_pickle, _file(folder, "v.pkl", pickled)) is None


@FUZZ
@given(data=random_files, content=plain)
def test_checkpoint_loader(folder: Path, data: bytes, content):
    _only_project_errors(load_checkpoint, _file(folder, "random.pt", data))
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "payload": content}, buffer)
    state = _only_project_errors(load_checkpoint, _file(folder, "dict.pt", buffer.getvalue()))
    assert state is None


CONFIG_KEYS = [f"{section}.{key}" for section, values in config_to_dict(load_config()).items()
               if isinstance(values, dict) for key in values] + ["name", "train", "nope.key"]
VALUE_TEXTS = st.one_of(st.sampled_from(["1", "-3", "0", "1e999", "nan", ".inf", "[1, 2]", "[]",
                                         "{a: 1}", "true", "x", "1.5", "[[[[", "!!python/name:os",
                                         "", "1e-4", "'7'", "[1.0, nan]", "9" * 400,
                                         "-" + "9" * 400]), texts)


@FUZZ
@given(overrides=st.lists(st.builds(lambda key, value: f"{key}={value}",
                                    st.sampled_from(CONFIG_KEYS) | texts, VALUE_TEXTS),
                          max_size=4) | st.lists(texts, max_size=3))
def test_config_overrides(overrides: list[str]):
    _only_project_errors(load_config, None, overrides)


@FUZZ
@given(section=st.sampled_from(list(config_to_dict(load_config()))), key=texts, value=plain,
       known=st.sampled_from(CONFIG_KEYS), known_value=plain)
def test_config_from_random_dicts(section: str, key: str, value, known: str, known_value):
    base = config_to_dict(load_config())
    for values in ({section: {key: value}}, {key: value}, value):
        _only_project_errors(config_from_dict, values)
    changed = json.loads(json.dumps(base))
    node = changed
    *parents, last = known.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node[last] = known_value
    _only_project_errors(config_from_dict, changed)


def test_recipe_file_with_random_bytes(tmp_path: Path):
    """A recipe that is not YAML, is deeply nested, or inherits itself is a ConfigError."""
    for content in (b"\xff\xfe\x00", b"[" * 5000, b"inherit: recipe.yaml\n", b"- 1\n- 2\n",
                    b"train: {iterations: 1e999}\n", b"optim: {adam_betas: [0.9, 1.5]}\n"):
        (tmp_path / "recipe.yaml").write_bytes(content)
        with pytest.raises(CagnetError):
            load_config(tmp_path / "recipe.yaml")
