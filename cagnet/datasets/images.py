"""Reading images (BGR uint8 (H, W, 3)) and index masks (uint8 (H, W)) with errors that name
the file."""

import io
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
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error) as error:
        raise DataError(f"image {path} is unreadable or corrupt: {error}") from None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise DataError(f"image {path} is corrupt or not an image file")
    if _is_truncated_jpeg(data):
        raise DataError(f"image {path} is truncated (JPEG data ends before its end marker)")
    return image


def _is_truncated_jpeg(data: np.ndarray) -> bool:
    """Some OpenCV builds decode a cut-off JPEG with a grey bottom and only a warning. A JPEG
    ends with the EOI marker FF D9 (possibly followed by padding); when it does not, let PIL,
    which refuses truncated files, decide (rare: costs one more decode)."""
    raw = data.tobytes()
    if not raw.startswith(b"\xff\xd8") or raw.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return True
    return False


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
