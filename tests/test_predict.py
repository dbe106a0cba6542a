"""`cagnet predict` end to end on a tiny trained checkpoint (files, sizes, palette values,
unreadable inputs, --pattern, --batch-size, --min-confidence, a real photo), `cagnet eval`'s
two protocols, TTA and threshold, the evaluation pictures a training run writes, and the
custom-dataset recipe."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cagnet.cli import main
from cagnet.config import load_config
from cagnet.engine.trainer import train
from cagnet.inference.predict import output_names

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


def _labels(path: Path, colours: list | None = None) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P" and image.getpalette()[:3] == [0, 0, 0]  # 0 = no class
        if colours is not None:  # value k + 1 = class k, drawn in its predictions.json colour
            assert image.getpalette()[3:3 + 3 * len(colours)] == sum(colours, [])
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
        labels = _labels(out / f"{stem}_labels.png",
                         [entry["colour_rgb"] for entry in summary["classes"]])
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


def test_a_folder_of_unreadable_images_fails_and_writes_nothing(tiny_run, tmp_path: Path,
                                                              capsys):
    _, checkpoint = tiny_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.jpg", "b.png"):
        (inputs / name).write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(inputs),
                 "--out", str(out), "--device", "cpu"]) == 2
    assert "none of the 2 images" in capsys.readouterr().err
    assert not out.exists()
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(inputs),
                 "--out", str(out), "--pattern", "*.tif"]) == 2
    assert "--pattern '*.tif'" in capsys.readouterr().err and not out.exists()


def test_batched_prediction_equals_one_image_at_a_time(tiny_run, tmp_path: Path):
    _, checkpoint = tiny_run
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for index, (height, width) in enumerate(((23, 70), (90, 31), (40, 48), (41, 41))):
        cv2.imwrite(str(inputs / f"{index}.png"), rng.integers(0, 255, (height, width, 3),
                                                              np.uint8))
    for batch in ("1", "3"):
        assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(inputs),
                     "--out", str(tmp_path / batch), "--batch-size", batch, "--save-logits"]) == 0
    for index in range(4):
        np.testing.assert_allclose(np.load(tmp_path / "3" / f"{index}_logits.npy"),
                                   np.load(tmp_path / "1" / f"{index}_logits.npy"), atol=1e-4)
        single, batched = (_labels(tmp_path / b / f"{index}_labels.png") for b in ("1", "3"))
        assert (single == batched).mean() > 0.99


def test_min_confidence_leaves_unsure_pixels_without_a_class(tiny_run, tmp_path: Path):
    _, checkpoint = tiny_run
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(2).integers(0, 255, (30, 40, 3), np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(image),
                 "--out", str(out), "--min-confidence", "0.99"]) == 0
    labels = _labels(out / "image_labels.png")
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["min_confidence"] == 0.99 and (labels == 0).mean() > 0.5
    classes = summary["images"][str(image)]["classes"]
    none = [c for c in classes if c["name"] == "none"]
    assert none and none[0]["share"] == pytest.approx((labels == 0).mean(), abs=1e-6)
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(image),
                 "--out", str(out), "--min-confidence", "1.5"]) == 2


def test_eval_reports_both_protocols_tta_and_the_threshold_apart(tiny_run, tmp_path: Path,
                                                                capsys):
    base, checkpoint = tiny_run
    metrics = json.loads((base / "run" / "metrics.json").read_text())
    assert set(metrics["protocols"]) == {"full", "original"}
    assert metrics["hiou"] == metrics["protocols"]["full"]["hiou"]
    report = (base / "run" / "report.md").read_text()
    assert "| full (primary) |" in report and "| original |" in report
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--output-dir", str(out),
                 "--min-confidence", "0.9", "--set", "eval.protocol=original"]) == 0
    assert "protocol original" in capsys.readouterr().out
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["hiou"] == scored["protocols"]["original"]["hiou"]
    open_world = json.loads((out / "min_confidence.json").read_text())
    assert open_world["protocol"] == "original" and 0 <= open_world["coverage"] < 1
    assert "min_confidence" not in scored and "## Open-world threshold" in \
        (out / "report.md").read_text()
    assert main(["eval", "--checkpoint", str(checkpoint), "--output-dir", str(out),
                 "--set", "eval.tta=true", "--set", "eval.tta_scales=[0.5,1.0]"]) == 0
    assert "test_time_augmentation: logits averaged over scales [0.5, 1.0] and their " \
        "horizontal flips" in (out / "report.md").read_text()


def test_pattern_selects_the_photos_of_a_folder_with_label_maps(tiny_run, tmp_path: Path):
    folder = SHARED_DATA / "voc-samples"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    _, checkpoint = tiny_run
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(folder),
                 "--out", str(out), "--pattern", "*_image.png", "--batch-size", "4"]) == 0
    images = json.loads((out / "predictions.json").read_text())["images"]
    assert len(images) == 14 and all(name.endswith("_image.png") for name in images)


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
