"""The Python API: `cagnet.load(checkpoint).predict(image)` on a real photo, the accepted
image kinds (path, PIL, RGB array), the "no class" threshold, adding a class by name, and a
cheap `import cagnet`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cagnet
from cagnet.errors import DataError
from cagnet.inference.extend import ExtensionSettings

from conftest import SHARED_DATA, write_tiny_voc
from test_predict import train_tiny_checkpoint

PHOTO = SHARED_DATA / "voc-samples" / "0_image.png"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("api")
    return train_tiny_checkpoint(write_tiny_voc(base / "voc"), base / "run")


def test_three_lines_segment_a_photo(checkpoint: Path):
    if not PHOTO.is_file():
        pytest.skip(f"{PHOTO} not available")
    model = cagnet.load(checkpoint, device="cpu")
    labels = model.predict(PHOTO)
    with Image.open(PHOTO) as photo:
        assert labels.shape == (photo.height, photo.width) and labels.dtype == np.int64
        assert np.array_equal(model.predict(photo), labels)
        assert np.array_equal(model.predict(np.asarray(photo.convert("RGB"))), labels)
    assert 0 <= labels.min() and labels.max() < len(model.class_names) == 4
    unsure = model.predict(PHOTO, min_confidence=0.99)
    assert (unsure == -1).any() and np.array_equal(unsure[unsure >= 0], labels[unsure >= 0])


def test_arrays_must_be_rgb_uint8_and_classes_can_be_added(checkpoint: Path, tmp_path: Path):
    model = cagnet.load(checkpoint, device="cpu")
    with pytest.raises(DataError, match="RGB uint8 array"):
        model.predict(np.zeros((8, 8), dtype=np.float32))
    rows = tmp_path / "rows.npy"
    np.save(rows, np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32))
    model.add_classes(["zebra"], embeddings=rows, settings=ExtensionSettings(iterations=2))
    assert model.class_names[-1] == "zebra"
    labels = model.predict(np.full((20, 30, 3), 128, dtype=np.uint8))
    assert labels.shape == (20, 30) and labels.max() < 5


def test_import_cagnet_stays_cheap():
    code = "import sys, cagnet; assert callable(cagnet.load); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
