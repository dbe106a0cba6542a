"""Reading images and label masks with errors that name the file.

Images are returned as BGR uint8 (H, W, 3) arrays (the backbone's Caffe convention); masks as
uint8 (H, W) arrays of label ids, from palette ("P") or grey ("L") PNGs.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cagnet.errors import DataError


def read_image_bgr(path: str | Path) -> np.ndarray:
    """Read a colour image as BGR uint8 (H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"image {path} is corrupt or not an image file")
    return image


def read_label(path: str | Path) -> np.ndarray:
    """Read an index mask (palette or grey PNG) as uint8 (H, W) label ids."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label mask not found: {path}")
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode not in ("P", "L"):
                raise DataError(f"label mask {path} has mode {mask.mode!r}: expected an index "
                                "PNG (palette 'P' or grey 'L') whose pixel values are class ids")
            array = np.array(mask, dtype=np.uint8)
    except DataError:
        raise
    except Exception as error:  # PIL raises many types for truncated or corrupt files
        raise DataError(f"label mask {path} is corrupt or unreadable: {error}") from None
    if array.ndim != 2 or array.size == 0:
        raise DataError(f"label mask {path}: expected a 2-D index image, got shape {array.shape}")
    return array
