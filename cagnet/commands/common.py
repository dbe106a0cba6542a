"""Arguments shared by several subcommands: the recipe and its overrides, a run directory, the
device, and the new classes of `cagnet extend` / `cagnet predict --add-classes`."""

import argparse

from cagnet.errors import CagnetError

EXTENSION_SETTINGS = ("iterations", "lr", "batch_size", "unseen_rate", "seed", "shots",
                      "replay_images", "real_weight", "adapt_generator", "train_discriminator",
                      "generate_shot_classes", "network_iterations", "shot_share")


def add_command(commands, name: str, help_text: str, examples: str, handler=None,
                **options) -> argparse.ArgumentParser:
    """A subcommand parser that runs `handler` and whose --help ends with `examples` (one per
    line); `options` go to `add_parser`."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines())
    parser = commands.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **options)
    if handler:
        parser.set_defaults(handler=handler)
    return parser


def add_overrides_argument(parser: argparse.ArgumentParser, help_text: str = "override a "
                           "config value, e.g. --set train.iterations=100 (repeatable)") -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help=help_text)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="recipe: an installed recipe's "
                        "name (`cagnet recipes`) or a YAML file")
    add_overrides_argument(parser)


def add_run_arguments(parser: argparse.ArgumentParser, output_help: str) -> None:
    """The recipe, its overrides, --output-dir, --resume and --overwrite of a training run."""
    add_config_arguments(parser)
    parser.add_argument("--output-dir", required=True, help=output_help)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in --output-dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a run directory that holds checkpoints")


def add_extension_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """The new classes, their embedding source and the short classifier finetuning."""
    parser.add_argument("--add-classes", required=required, metavar="NAMES",
                        help='comma-separated new class names, e.g. "zebra,giraffe"')
    parser.add_argument("--word-vectors", action="append", default=[], metavar="PATH",
                        help="word-vector file(s) the model's classes were embedded with, in the "
                        "same order (repeatable: fastnvec = fastText file, then word2vec file)")
    parser.add_argument("--word-vectors-kind", action="append", default=[], metavar="KIND",
                        help="kind of each --word-vectors file (once for all, or once per "
                        "file): auto, word2vec, word2vec_binary, fasttext_bin, fasttext_vec")
    parser.add_argument("--embeddings", metavar="FILE.npy", help="the new classes' embedding "
                        "rows instead of word vectors (one row per new name, in order)")
    parser.add_argument("--iterations", type=int, default=300,
                        help="classifier finetuning iterations (default 300)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the "
                        "classifier head (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=None, help="generated label maps per "
                        "iteration (default: the checkpoint's train.batch_size)")
    parser.add_argument("--unseen-rate", type=float, default=None, help="extra sampling weight "
                        "of unseen classes (default: the checkpoint's train.gen_unseen_rate)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the finetuning's label "
                        "maps, latent codes and dropout (default 0)")
    parser.add_argument("--shots", metavar="DIR", help="a few labelled images of the new classes "
                        "(DIR/images/<id>.<ext>, DIR/masks/<id>.png index PNGs with 255 = "
                        "unlabelled, DIR/class_names.txt naming the mask values): the head also "
                        "learns from their real pixels")
    parser.add_argument("--replay-images", type=int, default=50, metavar="N", help="with "
                        "--shots: replay the seen classes' pixels of N training images of the "
                        "checkpoint's dataset when it is reachable (default 50; 0 = none)")
    parser.add_argument("--real-weight", type=float, default=1.0, help="with --shots: weight "
                        "of the real pixels' loss against the generated one (default 1)")
    parser.add_argument("--adapt-generator", action="store_true", help="with --shots: first "
                        "adapt the generator to the shot pixels (content loss, 100 iterations)")
    parser.add_argument("--train-discriminator", action="store_true", help="with --shots: "
                        "train the whole discriminator (its shared trunk and the classifier "
                        "head, as step 2 does), not only the head")
    parser.add_argument("--no-generated-shot-classes", dest="generate_shot_classes",
                        action="store_false", help="with --shots: generate no features of the "
                        "new classes that have shot pixels; they learn from those pixels alone "
                        "(the other classes keep their generated features)")
    parser.add_argument("--network-iterations", type=int, default=0, metavar="N", help="with "
                        "--shots: first train the whole network (CaGNet's step 1) for N "
                        "iterations on crops of the shots mixed with crops of the checkpoint's "
                        "training images, so its features learn the new classes (default 0: "
                        "the network stays frozen; 200 on the shapes benchmark)")
    parser.add_argument("--shot-share", type=float, default=0.125, metavar="F", help="with "
                        "--network-iterations: the fraction of each batch cropped from the shots "
                        "(at least one crop; default 0.125)")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of PyTorch (0 = its "
                        "default; 1 is fastest for the small shapes model on a busy CPU)")


def resolve_runtime(arguments: argparse.Namespace):
    """The device of --device, after applying --threads."""
    import torch

    from cagnet.utils.runtime import resolve_device
    if arguments.threads < 0:
        raise CagnetError(f"--threads: expected >= 0, got {arguments.threads}")
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    return resolve_device(arguments.device)


def extension_inputs(arguments: argparse.Namespace):
    """(word-vector sources as (kind, path) pairs, embeddings file, ExtensionSettings), checked."""
    from cagnet.inference.extend import ExtensionSettings
    paths, kinds = arguments.word_vectors, arguments.word_vectors_kind
    if kinds and len(kinds) not in (1, len(paths)):
        raise CagnetError(f"--word-vectors-kind given {len(kinds)} times for {len(paths)} "
                          "--word-vectors files: give it once for all or once per file")
    kinds = kinds * len(paths) if len(kinds) == 1 else kinds or ["auto"] * len(paths)
    if arguments.iterations < 0 or (arguments.batch_size is not None
                                    and arguments.batch_size < 1):
        raise CagnetError("--iterations must be >= 0 and --batch-size >= 1")
    if arguments.replay_images < 0 or arguments.real_weight < 0 \
            or arguments.network_iterations < 0:
        raise CagnetError("--replay-images, --real-weight and --network-iterations must be >= 0")
    if not 0.0 < arguments.shot_share <= 1.0:
        raise CagnetError(f"--shot-share: expected a fraction in (0, 1], got "
                          f"{arguments.shot_share}")
    settings = ExtensionSettings(**{name: getattr(arguments, name) for name in EXTENSION_SETTINGS})
    return list(zip(kinds, paths)), arguments.embeddings, settings
