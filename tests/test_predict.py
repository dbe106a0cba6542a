"""`cagnet predict` end to end on a tiny trained checkpoint (files, sizes, palette values,
unreadable inputs, a real photo), the banded upsampling, the evaluation pictures a training run
writes, and the custom-dataset recipe."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cagnet.cli import main
from cagnet.config import load_config
from cagnet.engine.trainer import train
from cagnet.inference.predict import output_names, upsampled_argmax

from conftest import REPOSITORY, SHARED_DATA, tiny_config_overrides, write_tiny_voc


def train_tiny_checkpoint(root: Path, run_dir: Path, extra: tuple[str, ...] = ()) -> Path:
    """A tiny CaGNet trained for a few step-1 iterations on the tiny benchmark in `root`."""
    config = load_config(None, tiny_config_overrides(root) + list(extra))
    result = train(config, run_dir, overwrite=True, show_progress=False)
    return result.checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("predict")
    checkpoint = train_tiny_checkpoint(write_tiny_voc(base / "voc"), base / "run")
    return base, checkpoint


def _labels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]  # class 0 = VOC colour 1
        return np.array(image)


def test_predict_folder_sizes_palette_and_skipped_files(tiny_run, tmp_path: Path, capsys):
    base, checkpoint = tiny_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (23, 70), "tall.jpg": (90, 31), "wide.jpg": (40, 48)}
    for name, (height, width) in sizes.items():
        cv2.imwrite(str(inputs / name), rng.integers(0, 255, (height, width, 3), np.uint8))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    (inputs / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(inputs),
                 "--out", str(out), "--device", "cpu", "--save-logits", "--panel"]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["skipped"] == [str(inputs / "broken.jpg")]
    assert "1 unreadable skipped" in capsys.readouterr().out
    num_classes = len(summary["classes"])
    assert num_classes == 4 and summary["classes"][3]["tag"] == "unseen"
    for name, (height, width) in sizes.items():
        stem = output_names([inputs / n for n in sizes])[list(sizes).index(name)]
        labels = _labels(out / f"{stem}_labels.png")
        assert labels.shape == (height, width)
        assert labels.min() >= 1 and labels.max() <= num_classes
        assert cv2.imread(str(out / f"{stem}_overlay.png")).shape == (height, width, 3)
        assert (out / f"{stem}_legend.png").is_file() and (out / f"{stem}_panel.png").is_file()
        logits = np.load(out / f"{stem}_logits.npy")
        assert logits.shape[0] == num_classes and logits.dtype == np.float32
        record = summary["images"][str(inputs / name)]
        assert abs(sum(c["share"] for c in record["classes"]) - 1.0) < 1e-4
    assert {"wide_png", "wide_jpg", "tall"} <= {output_names([inputs / n for n in sizes])[i]
                                                for i in range(3)}


def test_predict_single_unreadable_image_names_the_file(tiny_run, tmp_path: Path, capsys):
    _, checkpoint = tiny_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(broken),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert str(broken) in capsys.readouterr().err


def test_predict_on_a_real_photo(tiny_run, tmp_path: Path):
    photo = SHARED_DATA / "voc-samples" / "0_image.png"
    if not photo.is_file():
        pytest.skip(f"{photo} not available")
    _, checkpoint = tiny_run
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(photo),
                 "--out", str(out), "--device", "cpu"]) == 0
    height, width = cv2.imread(str(photo)).shape[:2]
    labels = _labels(out / "0_image_labels.png")
    assert labels.shape == (height, width) and 1 <= labels.min() and labels.max() <= 4


def test_banded_upsampling_matches_interpolate():
    logits = torch.randn(5, 7, 9)
    for size in ((61, 45), (13, 100), (7, 9), (3, 4)):
        direct = F.interpolate(logits[None], size=size, mode="bilinear",
                               align_corners=False)[0].argmax(0)
        banded = upsampled_argmax(logits, size, budget=5 * size[1] * 4)  # 4 rows per band
        assert torch.equal(direct, banded)


def test_training_run_writes_evaluation_pictures_and_a_tensorboard_panel(tiny_run):
    base, _ = tiny_run
    run = base / "run"
    header = (run / "confusion.csv").read_text().splitlines()[0].split(",")
    assert header[1:] == ["red circle", "blue circle", "red square", "blue square"]
    rows = (run / "confusion.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == header[1:]
    for name in ("confusion.png", "iou.png"):
        image = cv2.imread(str(run / name))
        assert image is not None and image.shape[0] > 50
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "val/predictions" in events.Tags()["images"]


def test_custom_example_recipe_reads_a_custom_layout(tmp_path: Path):
    from cagnet.datasets.build import build_benchmark, build_dataset

    voc = write_tiny_voc(tmp_path / "voc")
    root = tmp_path / "my_data"
    for folder, source in (("images", "JPEGImages"), ("masks", "SegmentationClass")):
        (root / folder).mkdir(parents=True)
        for file in (voc / source).iterdir():
            (root / folder / file.name).write_bytes(file.read_bytes())
    (root / "lists").mkdir()
    for split in ("train", "val"):
        (root / "lists" / f"{split}.txt").write_text(
            (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text())
    for name in ("class_names.txt", "split.yaml", "class_embeddings.npy"):
        (root / name).write_bytes((voc / name).read_bytes())
    config = load_config(REPOSITORY / "experiments" / "custom_example.yaml",
                         [f"data.root={root}"])
    benchmark = build_benchmark(config)
    assert benchmark.split.model_class_names[-1] == "blue square"
    sample = build_dataset(config.data, benchmark.split, 0, "test",
                           eval_warp=config.eval.warp_size)[0]
    assert sample["image"].shape == (3, config.eval.warp_size, config.eval.warp_size)
