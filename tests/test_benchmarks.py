"""Loaders of the official layouts on small fixtures written in the exact official formats:
VOC palette PNGs + SBD `GTcls` .mat files (prepare-voc, train_aug, the voc_sbd layout),
Pascal-Context PNGs and 459-label `LabelMap` .mat files, COCO-Stuff grey PNGs with derived id
lists, ZS3Net's image dropping, the shipped split files, and `cagnet data check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image

from cagnet.datasets.build import build_dataset
from cagnet.cli import main
from cagnet.config import load_config
from cagnet.datasets.label_sources import read_sbd_mat, voc_colour_map
from cagnet.tools.prepare import prepare_voc
from cagnet.datasets.splits import read_class_names, read_id_list, read_split
from cagnet.errors import DataError

from conftest import REPOSITORY

SIZE = (24, 32)
VOC_NAMES = read_class_names(REPOSITORY / "data" / "voc12" / "class_names.txt")


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def _palette_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_colour_map().reshape(-1).tolist())
    image.save(path)


def _sbd_mat(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(mask[mask > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": mask.astype(np.uint8),
                                      "Boundaries": np.zeros((len(present), 1), dtype=object),
                                      "CategoriesPresent": present}})


def _mask(value: int, seed: int) -> np.ndarray:
    mask = np.zeros(SIZE, dtype=np.uint8)
    row = np.random.default_rng(seed).integers(0, SIZE[0] - 8)
    mask[row:row + 8, 4:20] = value
    return mask


def _voc_and_sbd(tmp_path: Path) -> tuple[Path, Path, dict]:
    """VOC train [v1, v2], val [v3, v4]; SBD train [s1, v1, v3], val [s2]. v1 is in both with
    different masks (VOC must win); s1 and s2 exist only in SBD."""
    voc, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    masks = {"v1": _mask(1, 1), "v2": _mask(17, 2), "v3": _mask(3, 3), "v4": _mask(8, 4),
             "s1": _mask(16, 5), "s2": _mask(5, 6)}
    masks["v3"][0, :] = 255
    for index, name in enumerate(masks):
        _image(voc / "JPEGImages" / f"{name}.jpg", index)
    for name in ("v1", "v2", "v3", "v4"):
        _palette_png(voc / "SegmentationClass" / f"{name}.png", masks[name])
    for name in ("s1", "s2", "v3"):
        _sbd_mat(sbd / "cls" / f"{name}.mat", masks[name] % 255)
    _sbd_mat(sbd / "cls" / "v1.mat", _mask(12, 9))
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("v1\nv2\n")
    (lists / "val.txt").write_text("v3\nv4\n")
    (sbd / "train.txt").write_text("s1\nv1\nv3\n")
    (sbd / "val.txt").write_text("s2\n")
    return voc, tmp_path / "benchmark_RELEASE", masks


def test_prepare_voc_derives_train_aug_and_voc_png_wins(tmp_path: Path, capsys):
    voc, sbd, masks = _voc_and_sbd(tmp_path)
    assert main(["data", "prepare-voc", "--voc", str(voc), "--sbd", str(sbd)]) == 0
    assert "4 ids" in capsys.readouterr().out
    train_aug = (voc / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert train_aug == ["s1", "s2", "v1", "v2"]  # (SBD train + val + VOC train) - VOC val
    for name, mask in masks.items():
        with Image.open(voc / "SegmentationClassAug" / f"{name}.png") as png:
            assert png.mode == "P"
            assert np.array_equal(np.array(png), mask), name  # v1: VOC's mask, not SBD's


def test_prepare_voc_names_every_id_without_a_label(tmp_path: Path):
    voc, sbd, _ = _voc_and_sbd(tmp_path)
    (sbd / "dataset" / "cls" / "s2.mat").unlink()
    (voc / "SegmentationClass" / "v4.png").unlink()
    with pytest.raises(DataError) as error:
        prepare_voc(voc, sbd)
    assert "s2" in str(error.value) and "v4" in str(error.value)
    assert not (voc / "SegmentationClassAug").exists()  # nothing written before the check


def test_voc_sbd_layout_reads_the_mat_files_directly(tmp_path: Path):
    voc, sbd, masks = _voc_and_sbd(tmp_path)
    prepare_voc(voc, sbd)
    config = load_config(REPOSITORY / "experiments" / "voc12.yaml", [
        f"data.root={voc}", "data.layout=voc_sbd", f"data.sbd_root={sbd}",
        "data.label_dir=SegmentationClass"])
    split = read_split(REPOSITORY / "data" / "voc12" / "split_spnet.yaml", VOC_NAMES)
    dataset = build_dataset(config.data, split, seed=0)
    assert dataset.ids == ["s1", "s2", "v1", "v2"]
    for index, name in enumerate(dataset.ids):
        _, label = dataset.read_raw(index)
        assert np.array_equal(label, masks[name]), name
    assert dataset.label_path(0).suffix == ".mat" and dataset.label_path(2).suffix == ".png"


def test_sbd_reader_rejects_a_foreign_mat_file(tmp_path: Path):
    scipy.io.savemat(tmp_path / "x.mat", {"LabelMap": np.zeros((2, 2), dtype=np.uint16)})
    with pytest.raises(DataError, match="GTcls"):
        read_sbd_mat(tmp_path / "x.mat")


def _context_root(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """VOC2010 images + trainval/<id>.mat with 459-style labels and a labels.txt in which the
    33 classes sit at scattered ids, `diningtable` is called `table`, plus unrelated labels."""
    root = tmp_path / "VOC2010"
    names33 = read_class_names(REPOSITORY / "data" / "context" / "class_names.txt")
    label_names = ["accordion", "air conditioner"] + [
        "table" if name == "diningtable" else name for name in names33[1:]] + ["wood", "zebra"]
    order = np.random.default_rng(0).permutation(len(label_names))
    ids = {label_names[i]: int(rank) + 1 for rank, i in enumerate(order)}
    (root / "trainval").mkdir(parents=True)
    (root / "labels.txt").write_text("".join(f"{i}: {n}\n" for n, i in sorted(
        ids.items(), key=lambda item: item[1])))
    for index, image_id in enumerate(["2008_000002", "2008_000003"]):
        _image(root / "JPEGImages" / f"{image_id}.jpg", index)
        label_map = np.full(SIZE, ids["accordion"], dtype=np.uint16)
        label_map[:8] = ids["cat"]
        label_map[8:16, :10] = ids["table"]
        label_map[16:, :] = ids["sky"]
        label_map[20:, 20:] = 0  # unlabelled
        scipy.io.savemat(root / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})
    return root, ids


def test_context_mat_layout_maps_459_labels_by_name(tmp_path: Path):
    root, _ = _context_root(tmp_path)
    (tmp_path / "ids.txt").write_text("2008_000002\n2008_000003\n")
    config = load_config(REPOSITORY / "experiments" / "context.yaml", [
        f"data.root={root}", "data.layout=context_mat", "data.label_dir=trainval",
        "data.label_suffix=.mat", f"data.train_list={tmp_path / 'ids.txt'}"])
    names = read_class_names(REPOSITORY / "data" / "context" / "class_names.txt")
    split = read_split(REPOSITORY / "data" / "context" / "split_cagnet.yaml", names)
    dataset = build_dataset(config.data, split, seed=0)
    _, label = dataset.read_raw(1)
    assert (label[:8] == names.index("cat")).all()
    assert (label[8:16, :10] == names.index("diningtable")).all()
    assert (label[16:20] == names.index("sky")).all() and (label[20:, 20:] == 0).all()
    assert (label[8:16, 10:] == 0).all()  # accordion: not a class -> background
    sample = dataset[(1, 0)]
    assert set(sample["label"].unique().tolist()) <= set(range(split.num_seen)) | {255}


def test_context_mat_layout_names_classes_missing_from_labels_txt(tmp_path: Path):
    root, _ = _context_root(tmp_path)
    text = (root / "labels.txt").read_text().replace(": keyboard\n", ": piano\n")
    (root / "labels.txt").write_text(text)
    (tmp_path / "ids.txt").write_text("2008_000002\n")
    config = load_config(REPOSITORY / "experiments" / "context.yaml", [
        f"data.root={root}", "data.layout=context_mat", "data.label_dir=trainval",
        "data.label_suffix=.mat", f"data.train_list={tmp_path / 'ids.txt'}"])
    names = read_class_names(REPOSITORY / "data" / "context" / "class_names.txt")
    split = read_split(REPOSITORY / "data" / "context" / "split_cagnet.yaml", names)
    with pytest.raises(DataError, match="keyboard"):
        build_dataset(config.data, split, seed=0)


def test_context_png_layout_and_missing_list_error(tmp_path: Path, monkeypatch):
    root = tmp_path / "VOC2010"
    names59 = read_class_names(REPOSITORY / "data" / "context" / "class_names_59.txt")
    _image(root / "JPEGImages" / "2008_000002.jpg", 0)
    mask = _mask(names59.index("cow"), 0)
    mask[:4] = names59.index("wall")
    (root / "59_context_labels").mkdir(parents=True)
    Image.fromarray(mask, mode="L").save(root / "59_context_labels" / "2008_000002.png")
    monkeypatch.chdir(tmp_path)
    overrides = [f"data.root={root}", "data.label_dir=59_context_labels",
                 "data.class_names=data/context/class_names_59.txt",
                 "data.split=data/context/split_zs3_2.yaml"]
    config = load_config(REPOSITORY / "experiments" / "context.yaml", overrides)
    split = read_split(REPOSITORY / "data" / "context" / "split_zs3_2.yaml", names59)
    missing = load_config(REPOSITORY / "experiments" / "context.yaml",
                          overrides + ["data.train_list=data/context/train_v2.txt"])
    with pytest.raises(DataError, match=r"data/context/train_v2\.txt.*convert-lists"):
        build_dataset(missing.data, split, seed=0)
    (tmp_path / "val.txt").write_text("2008_000002\n")
    config = load_config(REPOSITORY / "experiments" / "context.yaml",
                         overrides + [f"data.val_list={tmp_path / 'val.txt'}"])
    label = build_dataset(config.data, split, 0, "test")[0]["label"]
    cow = split.num_seen + split.unseen_ids.index(names59.index("cow"))
    assert (label == cow).sum() == (mask == names59.index("cow")).sum()
    assert (label == 0).sum() == (mask == 0).sum()  # background is the first seen class


def _cocostuff_root(tmp_path: Path) -> Path:
    root = tmp_path / "cocostuff"
    for split, stems in (("train2017", ["000000000009", "000000000025"]),
                         ("val2017", ["000000000139"])):
        for index, stem in enumerate(stems):
            _image(root / "images" / split / f"{stem}.jpg", index)
            mask = np.full(SIZE, 255, dtype=np.uint8)
            mask[:10] = 0  # person
            mask[10:20] = 20  # cow (unseen)
            mask[20:, :5] = 181  # wood
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, mode="L").save(root / "annotations" / split / f"{stem}.png")
    _image(root / "images" / "train2017" / "000000000030.jpg", 9)  # no annotation: not listed
    return root


def test_cocostuff_lists_are_derived_from_the_folders(tmp_path: Path):
    root = _cocostuff_root(tmp_path)
    config = load_config(REPOSITORY / "experiments" / "cocostuff.yaml", [f"data.root={root}"])
    names = read_class_names(REPOSITORY / "data" / "cocostuff" / "class_names.txt")
    split = read_split(REPOSITORY / "data" / "cocostuff" / "split_spnet.yaml", names)
    train = build_dataset(config.data, split, seed=0)
    assert train.ids == ["train2017/000000000009", "train2017/000000000025"]
    label = build_dataset(config.data, split, 0, "test")[0]["label"]
    cow = split.num_seen + split.unseen_ids.index(names.index("cow"))
    assert (label[10:20] == cow).all() and (label[:10] == split.seen_ids.index(0)).all()
    assert main(["data", "prepare-cocostuff", "--root", str(root)]) == 0
    assert (root / "val2017.txt").read_text().split() == ["val2017/000000000139"]


def test_zs3_protocol_drops_training_images_with_unseen_pixels(tmp_path: Path):
    voc, sbd, masks = _voc_and_sbd(tmp_path)
    prepare_voc(voc, sbd)
    split_path = REPOSITORY / "data" / "voc12" / "split_zs3_4.yaml"  # cow, motorbike, aero, sofa
    split = read_split(split_path, VOC_NAMES)
    base = [f"data.root={voc}", f"data.split={split_path}"]
    kept = build_dataset(load_config(REPOSITORY / "experiments" / "voc12.yaml", base).data,
                         split, 0).ids
    dropped = build_dataset(load_config(REPOSITORY / "experiments" / "voc12.yaml", base + [
        "data.drop_images_with_unseen=true"]).data, split, 0).ids
    assert kept == ["s1", "s2", "v1", "v2"] and dropped == ["s1", "s2", "v2"]  # v1: aeroplane
    assert split.train_lookup()[0] == 0  # background is a seen class


@pytest.mark.parametrize("dataset, class_file, total, steps", [
    ("voc12", "class_names.txt", 21, [["cow", "motorbike"], ["aeroplane", "sofa"],
                                      ["cat", "tvmonitor"], ["train", "bottle"],
                                      ["chair", "pottedplant"]]),
    ("context", "class_names_59.txt", 60, [["cow", "motorbike"], ["sofa", "cat"],
                                           ["boat", "fence"], ["bird", "tvmonitor"],
                                           ["keyboard", "aeroplane"]])])
def test_zs3_split_files_are_cumulative_with_background_seen(dataset, class_file, total, steps):
    names = read_class_names(REPOSITORY / "data" / dataset / class_file)
    assert len(names) == total and names[0] == "background"
    expected: list[str] = []
    for step in steps:
        expected += step
        path = REPOSITORY / "data" / dataset / f"split_zs3_{len(expected)}.yaml"
        split = read_split(path, names)
        assert [names[i] for i in split.unseen_ids] == expected
        assert 0 in split.seen_ids and split.num_seen + split.num_unseen == total
    if dataset == "context":
        assert names[1:] == sorted(names[1:])  # the standard Context-59 order is alphabetical
        embedding = (REPOSITORY / "data" / dataset / "embedding_names_59.txt").read_text()
        assert len(embedding.split("\n")) - 1 == total


def test_data_check_reports_histogram_and_every_bad_file(tmp_path: Path, capsys):
    voc, sbd, _ = _voc_and_sbd(tmp_path)
    prepare_voc(voc, sbd)
    arguments = ["data", "check", "--dataset", "voc12", "--root", str(voc),
                 "--out", str(tmp_path / "check.json")]
    assert main(arguments) == 1  # the 2 val images hold no sofa, train nor tvmonitor:
    output = capsys.readouterr().out  # those unseen classes would have no IoU
    assert "train: 4 ids listed" in output and "val: 2 ids listed" in output
    assert "problems:" in output and "unseen class 'tvmonitor' has no pixel" in output
    flagged = output.count("has no pixel in these images")
    assert f"{flagged} problems:" in output  # nothing else is wrong
    report = yaml.safe_load((tmp_path / "check.json").read_text())
    assert report["splits"]["train"]["pixels"]["sheep"] == 8 * 16  # v2, unseen
    assert report["unseen_training_pixels"] == 2 * 8 * 16  # v2 sheep + s1 pottedplant

    labels = voc / "SegmentationClassAug"
    (voc / "JPEGImages" / "s1.jpg").unlink()
    (labels / "s2.png").write_bytes(b"not a png")
    _palette_png(labels / "v2.png", np.full(SIZE, 77, dtype=np.uint8))
    _palette_png(labels / "v3.png", np.zeros((5, 5), dtype=np.uint8))
    (labels / "v4.png").unlink()
    assert main(arguments) == 1
    output = capsys.readouterr().out
    for name in ("s1.jpg", "s2.png", "v2.png", "v3.png", "v4.png"):
        assert name in output, name
    assert "problems:" in output and "1 problems" not in output


def test_original_npy_split_lists_convert_to_id_lists(tmp_path: Path) -> None:
    import numpy as np

    paths = np.array(["/users/x/annotations/train/2010_002746",
                      "./deeplab/annotations/val2017/000000002157.png"])
    np.save(tmp_path / "list.npy", paths)
    assert main(["data", "convert-lists", "--npy", str(tmp_path / "list.npy"), "--out",
                 str(tmp_path / "ids.txt")]) == 0
    assert (tmp_path / "ids.txt").read_text() == "2010_002746\n000000002157\n"
    assert main(["data", "convert-lists", "--npy", str(tmp_path / "list.npy"), "--out",
                 str(tmp_path / "ids.txt"), "--keep-folder"]) == 0
    assert (tmp_path / "ids.txt").read_text().splitlines()[1] == "val2017/000000002157"
    np.save(tmp_path / "bad.npy", np.zeros(3))
    assert main(["data", "convert-lists", "--npy", str(tmp_path / "bad.npy"), "--out",
                 str(tmp_path / "x.txt")]) == 2
    shipped = REPOSITORY / "data" / "context"
    assert len(read_id_list(shipped / "train.txt")) == 4998
    assert len(read_id_list(shipped / "val.txt")) == 5105
