"""`cagnet data ...`: the shapes benchmark, preparing real datasets and lists, `check`."""

import argparse

from cagnet.commands.common import add_command, add_overrides_argument
from cagnet.errors import CagnetError

BENCHMARK_RECIPES = ("voc12", "context", "cocostuff")


def add_parser(commands) -> None:
    parser = add_command(commands, "data", "dataset tools: the shapes benchmark, real "
                         "benchmarks' lists, checks", """
cagnet data shapes --out data/shapes
cagnet data check --dataset voc12 --root /data/VOCdevkit/VOC2012
cagnet data prepare-msrc --source /data/MSRC_ObjCategImageDatabase_v2 --root /data/msrc""")
    tools = parser.add_subparsers(dest="data_command", required=True, metavar="TOOL")
    shapes = add_command(tools, "shapes", "write the synthetic shapes benchmark", """
cagnet data shapes --out data/shapes
cagnet data shapes --out data/shapes_small --num-train 200 --num-val 40 --num-pretrain 400
cagnet data shapes --out data/shapes_comp --word-vectors compositional""", run_shapes)
    shapes.add_argument("--out", required=True, help="the benchmark folder to write (images, "
                        "masks, id lists, class names, split, word vectors, pretrain/)")
    shapes.add_argument("--seed", type=int, default=0, help="every image and word vector is a "
                        "function of (seed, split, index)")
    shapes.add_argument("--num-train", type=int, default=1200, help="training images")
    shapes.add_argument("--num-val", type=int, default=240, help="test images (val.txt)")
    shapes.add_argument("--num-validation", type=int, default=120, help="held-out images for "
                        "tuning and periodic validation (validation.txt)")
    shapes.add_argument("--num-pretrain", type=int, default=3200, help="image-level "
                        "pretraining images (all classes)")
    shapes.add_argument("--word-vectors", choices=("class", "compositional"), default="class",
                        help="class: one vector per class name, its pattern and colour plus a "
                        "part of its own (unseen embeddings off the seen span, like real "
                        "words); compositional: the mean of the pattern and colour words "
                        "(unseen embeddings in the seen span)")

    voc = add_command(tools, "prepare-voc", "derive the 10,582-image train_aug list from VOC "
                      "2012 + SBD and build SegmentationClassAug/ index PNGs", """
cagnet data prepare-voc --voc /data/VOCdevkit/VOC2012 --sbd /data/benchmark_RELEASE""",
                      run_prepare_voc)
    voc.add_argument("--voc", required=True, help="VOCdevkit/VOC2012")
    voc.add_argument("--sbd", required=True, help="SBD: benchmark_RELEASE (or its dataset/)")
    voc.add_argument("--workers", type=int, default=4, help="converter processes (default 4)")

    coco = add_command(tools, "prepare-cocostuff", "write train2017.txt / val2017.txt id lists "
                       "from the COCO-Stuff 164k folders", "cagnet data prepare-cocostuff "
                       "--root /data/cocostuff", run_prepare_cocostuff)
    coco.add_argument("--root", required=True, help="folder holding images/ and annotations/")
    coco.add_argument("--out-dir", default=None, help="where the lists go (default: --root)")

    msrc = add_command(tools, "prepare-msrc", "MSRC-v2 (MSRC-21) in the project's layout "
                       "(non-commercial research licence: never commit the data)", """
cagnet data prepare-msrc --source /data/MSRC_ObjCategImageDatabase_v2 --root /data/msrc""",
                       run_prepare_msrc)
    msrc.add_argument("--source", required=True, help="the MSRC_v2 folder (Images/*.bmp, "
                      "newsegmentations_mats/*_GT.mat) or its parent")
    msrc.add_argument("--root", required=True, help="the dataset folder to write")

    lists = add_command(tools, "convert-lists", "the original release's split .npy lists "
                        "(Context, COCO-Stuff) -> id lists", """
cagnet data convert-lists --npy dataset/context/split/train_list.npy --out train.txt
cagnet data convert-lists --npy dataset/cocostuff/split/train_list.npy --out train2017.txt \\
    --keep-folder""", run_convert_lists)
    lists.add_argument("--npy", required=True, help="e.g. dataset/context/split/train_list.npy")
    lists.add_argument("--out", required=True, help="the id list to write, e.g. "
                       "data/context/train.txt")
    lists.add_argument("--keep-folder", action="store_true", help="ids as folder/stem "
                       "(COCO-Stuff: train2017/<id>)")

    check = add_command(tools, "check", "verify a dataset on disk: layout, image counts, "
                        "class histogram, unseen training pixels, every bad file", """
cagnet data check --dataset voc12 --root /data/VOCdevkit/VOC2012
cagnet data check --config experiments/my_data.yaml --out my_data_check.json""", run_check)
    check.add_argument("--dataset", choices=BENCHMARK_RECIPES,
                       help="a benchmark's recipe (give --root)")
    check.add_argument("--config", help="any recipe (custom data)")
    check.add_argument("--root", help="dataset root (sets data.root)")
    add_overrides_argument(check, "override a config value (repeatable)")
    check.add_argument("--max-images", type=int, default=0, help="read only the first N ids "
                       "of each list (0 = all)")
    check.add_argument("--workers", type=int, default=4, help="reader threads")
    check.add_argument("--out", default=None, help="also write the report as JSON")


def run_shapes(arguments: argparse.Namespace) -> int:
    from cagnet.datasets.shapes import (VOC_NEAREST_COSINE_RANGE, VOC_RESIDUAL_RANGE,
                                        generate_shapes_benchmark, unseen_transfer_statistics)
    summary = generate_shapes_benchmark(arguments.out, seed=arguments.seed,
                                        num_train=arguments.num_train, num_val=arguments.num_val,
                                        num_validation=arguments.num_validation,
                                        num_pretrain=arguments.num_pretrain,
                                        word_vectors=arguments.word_vectors)
    print(f"shapes benchmark written to {arguments.out}: {len(summary['seen'])} seen, "
          f"{len(summary['unseen'])} unseen classes, {arguments.word_vectors} word vectors")
    print(f"unseen class embeddings (residual on the seen span; nearest seen class), Pascal-VOC "
          f"fastnvec: residual {VOC_RESIDUAL_RANGE[0]:.2f}-{VOC_RESIDUAL_RANGE[1]:.2f}, cosine "
          f"{VOC_NEAREST_COSINE_RANGE[0]:.2f}-{VOC_NEAREST_COSINE_RANGE[1]:.2f}:")
    for entry in unseen_transfer_statistics(arguments.out):
        print(f"  {entry['name']:<18} residual {entry['residual']:.3f}   nearest seen "
              f"{entry['nearest_seen']:<18} cosine {entry['cosine']:.3f}")
    return 0


def run_prepare_voc(arguments: argparse.Namespace) -> int:
    from cagnet.tools.prepare import prepare_voc
    result = prepare_voc(arguments.voc, arguments.sbd, workers=arguments.workers)
    counts = result.sources
    print(f"train_aug: {len(result.train_aug)} ids = (SBD train {counts['sbd_train']} ∪ SBD val "
          f"{counts['sbd_val']} ∪ VOC train {counts['voc_train']}) − VOC val "
          f"{counts['voc_val']}, written to {result.list_path}")
    print(f"SegmentationClassAug: {result.copied_from_voc} VOC PNGs copied, "
          f"{result.converted_from_sbd} converted from SBD .mat")
    return 0


def run_prepare_cocostuff(arguments: argparse.Namespace) -> int:
    from cagnet.tools.prepare import prepare_cocostuff
    for split, count in prepare_cocostuff(arguments.root, arguments.out_dir).items():
        print(f"{split}: {count} ids written to {arguments.out_dir or arguments.root}/{split}.txt")
    return 0


def run_prepare_msrc(arguments: argparse.Namespace) -> int:
    from cagnet.tools.msrc import prepare_msrc
    summary = prepare_msrc(arguments.source, arguments.root)
    print(f"MSRC-21 written to {arguments.root}: {summary['splits']} images "
          f"(train / val / test), {summary['void_pixels']} void pixels")
    return 0


def run_convert_lists(arguments: argparse.Namespace) -> int:
    from cagnet.tools.prepare import convert_npy_list
    count = convert_npy_list(arguments.npy, arguments.out, arguments.keep_folder)
    print(f"{count} ids written to {arguments.out}")
    return 0


def run_check(arguments: argparse.Namespace) -> int:
    from cagnet.config import config_to_dict, load_config
    from cagnet.tools.data_check import check_dataset, format_check_report
    from cagnet.utils.io import atomic_write_json
    if bool(arguments.dataset) == bool(arguments.config):
        raise CagnetError("data check: give either --dataset NAME --root PATH or --config RECIPE")
    if arguments.dataset and not arguments.root:
        raise CagnetError("data check --dataset: give --root, the dataset folder")
    overrides = ([f"data.root={arguments.root}"] if arguments.root else []) + arguments.overrides
    config = load_config(arguments.config or arguments.dataset, overrides)
    report = check_dataset(config, arguments.max_images, arguments.workers)
    print(format_check_report(report))
    if arguments.out:
        atomic_write_json(arguments.out, report.to_dict() | {"config": config_to_dict(config)})
    return 1 if report.problems else 0
