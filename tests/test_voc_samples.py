"""Smoke test on 14 real Pascal-VOC photos (`../shared/data/voc-samples`, skipped when absent):
their RGB colour-coded ground truth is turned into the official VOC layout (JPEGImages, palette
SegmentationClass PNGs) plus an SBD folder (`GTcls` .mat) for one image, then the whole real
path runs: `data prepare-voc`, `data check`, `audit`, a few training iterations of a tiny model
through the VOC loader, and `eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from cagnet.cli import main
from cagnet.datasets.label_sources import voc_colour_map

from conftest import REPOSITORY, SHARED_DATA

SAMPLES = SHARED_DATA / "voc-samples"
VOID_COLOUR = (224, 224, 192)


def _rgb_to_index(target: np.ndarray) -> np.ndarray:
    """(H, W, 3) VOC colours -> (H, W) uint8 ids; void colour -> 255; other colours fail."""
    codes = (target[..., 0].astype(np.int64) << 16) | (target[..., 1].astype(np.int64) << 8) \
        | target[..., 2].astype(np.int64)
    colours = voc_colour_map()[:21].astype(np.int64)
    table = {int((r << 16) | (g << 8) | b): index for index, (r, g, b) in enumerate(colours)}
    table[(VOID_COLOUR[0] << 16) | (VOID_COLOUR[1] << 8) | VOID_COLOUR[2]] = 255
    unknown = set(np.unique(codes).tolist()) - set(table)
    assert not unknown, f"colours outside the VOC colour map: {unknown}"
    index = np.zeros(codes.shape, dtype=np.uint8)
    for code, value in table.items():
        index[codes == code] = value
    return index


def _write_voc_layout(root: Path, sbd: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    numbers = sorted(int(path.name.split("_")[0]) for path in SAMPLES.glob("*_image.png"))
    ids = [f"2007_{number:06d}" for number in numbers]
    masks = {}
    for number, image_id in zip(numbers, ids):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        with Image.open(SAMPLES / f"{number}_image.png") as photo:
            photo.convert("RGB").save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        with Image.open(SAMPLES / f"{number}_target.png") as target:
            masks[image_id] = _rgb_to_index(np.array(target.convert("RGB")))
        png = Image.fromarray(masks[image_id], mode="P")
        png.putpalette(voc_colour_map().reshape(-1).tolist())
        (root / "SegmentationClass").mkdir(exist_ok=True)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    # val: one photo with sheep (unseen), so that the unseen mIoU is defined
    sbd_only, val = "2007_000294", ["2007_000023", "2007_000474", "2007_000582"]
    voc_train = [i for i in ids if i not in val and i != sbd_only]
    (root / "SegmentationClass" / f"{sbd_only}.png").unlink()  # its label only in SBD
    (sbd / "cls").mkdir(parents=True)
    scipy.io.savemat(sbd / "cls" / f"{sbd_only}.mat", {"GTcls": {
        "Segmentation": np.where(masks[sbd_only] == 255, 0, masks[sbd_only]).astype(np.uint8)}})
    (sbd / "train.txt").write_text(f"{sbd_only}\n{voc_train[0]}\n")
    (sbd / "val.txt").write_text(f"{voc_train[1]}\n")
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(voc_train) + "\n")
    (lists / "val.txt").write_text("\n".join(val) + "\n")
    return ids, masks


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/voc-samples is absent")
def test_real_voc_photos_through_prepare_check_audit_train_eval(tmp_path: Path, capsys):
    root, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    ids, masks = _write_voc_layout(root, sbd)
    assert main(["data", "prepare-voc", "--voc", str(root), "--sbd", str(sbd)]) == 0
    assert len((root / "ImageSets/Segmentation/train_aug.txt").read_text().split()) == 11

    rows = np.random.default_rng(0).standard_normal((21, 16)).astype(np.float32)
    np.save(tmp_path / "embeddings.npy", rows / np.linalg.norm(rows, axis=1, keepdims=True))
    sets = [f"data.root={root}", f"embeddings.path={tmp_path / 'embeddings.npy'}",
            "data.warp_size=81", "data.crop_size=65", "data.num_workers=0", "eval.warp_size=81",
            "model.blocks_per_stage=[1,1,1,1]", "model.base_width=4", "model.aspp_dilations=[1,2]",
            "model.context_channels=8", "model.generator_hidden=[16,16]",
            "model.generator_dropout=[0.1,0.1]", "model.discriminator_hidden=16", "model.init=",
            "loss.mmd_sigmas=[1,2]", "train.iterations=3", "train.batch_size=2",
            "train.log_interval=1", "train.checkpoint_interval=3", "train.device=cpu",
            "train.threads=1"]
    sets = [argument for item in sets for argument in ("--set", item)]

    status = main(["data", "check", "--dataset", "voc12", "--root", str(root), *sets,
                   "--out", str(tmp_path / "check.json")])
    check = json.loads((tmp_path / "check.json").read_text())
    # 14 photos hold few classes: the only problems are unseen classes without test pixels
    assert status == (1 if check["problems"] else 0)
    assert all("has no pixel in these images" in problem for problem in check["problems"])
    train_sheep = sum(int((masks[i] == 17).sum()) for i in check_ids(root, "train_aug"))
    assert check["splits"]["train"]["pixels"]["sheep"] == train_sheep > 0  # unseen, counted
    assert check["unseen_training_pixels"] == train_sheep

    audit = tmp_path / "audit.json"
    assert main(["audit", "--config", str(REPOSITORY / "experiments" / "voc12.yaml"), *sets,
                 "--out", str(audit)]) == 0
    report = json.loads(audit.read_text())
    assert report["ok"] and report["images"] == 11 and report["unseen_raw_pixels"] == train_sheep

    run = tmp_path / "run"
    assert main(["train", "--config", str(REPOSITORY / "experiments" / "voc12.yaml"), *sets,
                 "--output-dir", str(run)]) == 0
    assert json.loads((run / "protocol.json").read_text())["unseen_classes"][1] == "sheep"
    assert main(["eval", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert scores["iou"] == trained["iou"]  # same model, same val set, same loader
    assert 0.0 <= scores["pixel_acc"] <= 1.0 and scores["miou_unseen"] is not None
    capsys.readouterr()


def check_ids(root: Path, name: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{name}.txt").read_text().split()
