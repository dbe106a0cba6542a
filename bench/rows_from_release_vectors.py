"""Class embeddings for a dataset's class names, taken by name from the original release's word
vectors of another benchmark: a stand-in for the paper's "fastnvec" rows where the full
fastText and word2vec files are not at hand.

    python bench/rows_from_release_vectors.py --class-names datasets/msrc/class_names.txt \
        --pickles cocostuff/fasttext.pkl cocostuff/word2vec.pkl \
        --release-names cocostuff/labels_refined.txt --out runs/msrc_fastnvec.npy \
        --map building=building-other --map sky=sky-other --map water=water-other \
        --map aeroplane=airplane --map sign="street sign" --map face=person --map body=clothes

The pickles are read as `cagnet embed --import-pkl` reads them (each source unit-normalised,
concatenated, normalised again: 600-d for fastText + word2vec), the matrix is written with the
same sidecar plus the row each class took, and row i of a pickle belongs to line i of
`--release-names` (`<id><TAB><name>` or one name per line). Each class takes the
row of the same name, or of its `--map` name; a class with neither is an error naming it.
With the full word-vector files, `cagnet embed --source fasttext_bin:... --source
word2vec_binary:...` embeds the class names themselves and needs no mapping.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from cagnet.class_embeddings import import_original_pickles, save_class_embeddings  # noqa: E402
from cagnet.datasets.splits import read_class_names  # noqa: E402
from cagnet.errors import CagnetError  # noqa: E402


def read_release_names(path: Path) -> list[str]:
    """Names by row: `<id><TAB><name>` lines (ids 0..N-1 in order) or plain names."""
    names = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        identifier, tab, name = line.partition("\t")
        if tab and identifier.strip() != str(len(names)):
            raise SystemExit(f"error: {path}, line {number}: expected id {len(names)}, got "
                             f"{identifier!r}")
        names.append(name if tab else line.strip())
    return names


def pick_rows(matrix: np.ndarray, release_names: list[str], class_names: list[str],
              mapping: dict[str, str]) -> np.ndarray:
    """One row per class name: the release row named like it (or like `mapping[name]`)."""
    row_of = {name: index for index, name in enumerate(release_names)}
    missing = [name for name in class_names if mapping.get(name, name) not in row_of]
    if missing:
        raise SystemExit("error: no release row for " + ", ".join(
            f"{name!r}" + (f" (mapped to {mapping[name]!r})" if name in mapping else "")
            for name in missing) + ": give --map NAME=RELEASE_NAME")
    return np.stack([matrix[row_of[mapping.get(name, name)]] for name in class_names])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--class-names", required=True, help="the dataset's class-name file")
    parser.add_argument("--pickles", nargs="+", required=True,
                        help="the release's word-vector pickles, in concatenation order")
    parser.add_argument("--release-names", required=True,
                        help="names of the pickles' rows (e.g. labels_refined.txt)")
    parser.add_argument("--map", action="append", default=[], metavar="NAME=RELEASE_NAME",
                        help="take a class's row from another name (repeatable)")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    args = parser.parse_args(argv)
    mapping = {}
    for item in args.map:
        name, equals, target = item.partition("=")
        if not equals or not name or not target:
            raise SystemExit(f"error: --map {item!r}: expected NAME=RELEASE_NAME")
        mapping[name] = target
    try:
        class_names = read_class_names(args.class_names)
        matrix, metadata = import_original_pickles(args.pickles)
    except CagnetError as error:
        raise SystemExit(f"error: {error}") from None
    release_names = read_release_names(Path(args.release_names))
    if len(release_names) != matrix.shape[0]:
        raise SystemExit(f"error: {args.release_names} names {len(release_names)} rows, the "
                         f"pickles hold {matrix.shape[0]}")
    unknown = sorted(set(mapping) - set(class_names))
    if unknown:
        raise SystemExit(f"error: --map names {unknown}, which are not in {args.class_names}")
    rows = pick_rows(np.asarray(matrix, dtype=np.float32), release_names, class_names, mapping)
    try:
        save_class_embeddings(args.out, rows, dict(
            metadata, class_names=class_names, release_names=str(args.release_names),
            rows_by_name={name: mapping.get(name, name) for name in class_names}))
    except CagnetError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {args.out}: {rows.shape[0]} classes x {rows.shape[1]}")


if __name__ == "__main__":
    main()
