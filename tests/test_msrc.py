"""Tests of the MSRC-21 converter on tiny fake MSRC-style files (the real data is never used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image

from cagnet.tools.msrc import CLASS_NAMES, UNSEEN_CLASSES, VALIDATION_CLASSES, VOID, prepare_msrc
from cagnet.errors import DataError

HEIGHT, WIDTH = 6, 8


def segments_in_quarters() -> np.ndarray:
    """Segment ids 1..4, one per vertical quarter of a HEIGHT x WIDTH image."""
    return np.repeat(np.arange(1, 5, dtype=np.uint8)[None, :], WIDTH // 4, axis=1).repeat(
        HEIGHT, axis=0)


# Fake images: (id, newseg, newlabels); source ids 1 building, 5 horse, 8 mountain, 20 cat, 23 boat.
FAKE_IMAGES = {
    "1_1_s": (segments_in_quarters(), [1, 5, 8]),       # last segment unlabelled -> void
    "2_1_s": (segments_in_quarters(), [2, 3, 20, 23]),  # every segment labelled
    "3_1_s": (segments_in_quarters(), [7, 7, 10]),      # last segment unlabelled -> void
    "4_1_s": (segments_in_quarters(), [22, 11, 19, 6]),
}
SPLIT_LISTS = {"train": ["1_1_s", "2_1_s"], "val": ["3_1_s"], "test": ["4_1_s"]}


def write_fake_msrc(root: Path, images: dict = FAKE_IMAGES) -> tuple[Path, Path]:
    """Write `root/MSRC_v2/{Images,newsegmentations_mats}` and `root/lists/*.txt`."""
    source = root / "MSRC_v2"
    (source / "Images").mkdir(parents=True)
    (source / "newsegmentations_mats").mkdir()
    rng = np.random.default_rng(0)
    for image_id, (segments, labels) in images.items():
        pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(source / "Images" / f"{image_id}.bmp")
        scipy.io.savemat(source / "newsegmentations_mats" / f"{image_id}_GT.mat",
                         {"newseg": segments, "newlabels": np.array([labels], dtype=np.uint8)})
    lists = root / "lists"
    lists.mkdir()
    for split, ids in SPLIT_LISTS.items():
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return source, lists


def test_layout_mapping_and_summary(tmp_path: Path) -> None:
    source, lists = write_fake_msrc(tmp_path)
    out = tmp_path / "msrc"
    summary = prepare_msrc(tmp_path, out, lists=lists)  # the parent of MSRC_v2 is accepted too
    assert summary["images"] == 4 and summary["splits"] == {"train": 2, "val": 1, "test": 1}
    assert summary["unlabelled_last_segment"] == 2 and summary["image_sizes"] == {"8x6": 4}
    for split, ids in SPLIT_LISTS.items():
        assert (out / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split() == ids
    names = (out / "class_names.txt").read_text().split("\n")[:-1]
    assert names == list(CLASS_NAMES) and len(names) == 21 and "horse" not in names
    quarter = WIDTH // 4
    expected = {"1_1_s": [CLASS_NAMES.index("building"), VOID, VOID, VOID],
                "2_1_s": [CLASS_NAMES.index(name) for name in ("grass", "tree", "cat", "boat")],
                "3_1_s": [CLASS_NAMES.index(name) for name in ("sky", "sky", "water")] + [VOID]}
    for image_id, classes in expected.items():
        label = Image.open(out / "SegmentationClass" / f"{image_id}.png")
        assert label.mode == "P"
        mask = np.array(label)
        assert mask.shape == (HEIGHT, WIDTH)
        assert [int(mask[0, index * quarter]) for index in range(4)] == classes
    for image_id in FAKE_IMAGES:  # lossless copy
        original = np.array(Image.open(source / "Images" / f"{image_id}.bmp").convert("RGB"))
        assert np.array_equal(np.array(Image.open(out / "JPEGImages" / f"{image_id}.png")),
                              original)
    assert summary["void_pixels"] == 4 * HEIGHT * quarter
    assert summary["class_pixels"]["sky"] == 2 * HEIGHT * quarter
    assert sum(summary["class_pixels"].values()) + summary["void_pixels"] == 4 * HEIGHT * WIDTH
    split = yaml.safe_load((out / "split.yaml").read_text())
    assert split["unseen"] == list(UNSEEN_CLASSES)
    assert split["validation"] == list(VALIDATION_CLASSES)
    assert sorted(split["seen"] + split["unseen"]) == sorted(CLASS_NAMES)
    assert set(split["validation"]) <= set(split["seen"]) and len(split["seen"]) == 16
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("content, message", [
    ({"newseg": segments_in_quarters()}, "expected the keys 'newseg' and 'newlabels'"),
    ({"newseg": segments_in_quarters(), "newlabels": np.array([[1, 2]])}, "2 entries for 4"),
    ({"newseg": segments_in_quarters() * 2, "newlabels": np.array([[1, 2, 3]])},
     "every segment id 1..8"),
    ({"newseg": segments_in_quarters(), "newlabels": np.array([[1, 2, 30]])}, "class ids 1..23"),
    ({"newseg": segments_in_quarters()[:4], "newlabels": np.array([[1, 2, 3]])},
     "mask is 8x4 but image"),
])
def test_bad_mat_files_name_the_file(tmp_path: Path, content: dict, message: str) -> None:
    source, lists = write_fake_msrc(tmp_path)
    bad_file = source / "newsegmentations_mats" / "3_1_s_GT.mat"
    scipy.io.savemat(bad_file, content)
    with pytest.raises(DataError, match=message) as error:
        prepare_msrc(source, tmp_path / "msrc", lists=lists)
    assert "3_1_s_GT.mat" in str(error.value)


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MSRC folder not found"):
        prepare_msrc(tmp_path / "nowhere", tmp_path / "msrc", lists=tmp_path)
    source, lists = write_fake_msrc(tmp_path)
    (source / "Images" / "4_1_s.bmp").unlink()
    with pytest.raises(DataError, match="4_1_s.bmp"):
        prepare_msrc(source, tmp_path / "msrc", lists=lists)
    (lists / "val.txt").unlink()
    with pytest.raises(DataError, match="image list not found: .*val.txt"):
        prepare_msrc(source, tmp_path / "msrc", lists=lists)
    (lists / "val.txt").write_text("1_1_s\n")
    with pytest.raises(DataError, match="more than one"):
        prepare_msrc(source, tmp_path / "msrc", lists=lists)
