"""The Python API: `model = cagnet.load("runs/voc/checkpoints/final.pt")`, then
`labels = model.predict("photo.jpg")`: (H, W) indices into `model.class_names`."""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from cagnet.datasets.images import read_image_bgr
from cagnet.engine.checkpoint import LoadedModel, load_model
from cagnet.errors import DataError
from cagnet.inference.extend import ExtensionSettings, extend_loaded_model
from cagnet.inference.predict import NO_CLASS, predict_batch
from cagnet.models.fold import inference_model
from cagnet.utils.runtime import resolve_device


@dataclass
class Model:
    """A checkpoint's model, ready to segment (see `load`)."""

    loaded: LoadedModel

    @property
    def class_names(self) -> list[str]:
        """Class k's name (seen classes, then unseen, then added ones)."""
        return list(self.loaded.class_names)

    def predict(self, image: str | Path | Image.Image | np.ndarray,
                min_confidence: float = 0.0) -> np.ndarray:
        """(H, W) int64 indices into `class_names` (-1 below `min_confidence`) for a file path,
        a PIL image or an RGB (NOT OpenCV's BGR) uint8 array (H, W, 3)."""
        prediction, _ = predict_batch(self.loaded, [_image_bgr(image)], min_confidence)[0]
        return np.where(prediction == NO_CLASS, -1, prediction)

    def add_classes(self, names: Sequence[str], word_vectors: Sequence[str] = (),
                    embeddings: str | Path | None = None,
                    settings: ExtensionSettings | None = None) -> dict:
        """Add unseen classes by name (`cagnet.inference.extend`), embedded with the model's
        word-vector files (same order) or rows of a `.npy`; returns the extension summary."""
        sources = [("auto", str(path)) for path in word_vectors]
        return extend_loaded_model(self.loaded, list(names), sources,
                                   str(embeddings) if embeddings else None, settings)


def _image_bgr(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Any accepted image -> (H, W, 3) BGR uint8."""
    if isinstance(image, (str, Path)):
        return read_image_bgr(image)
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"expected an image path, a PIL image or an RGB uint8 array (H, W, 3), "
                        f"got dtype {array.dtype}, shape {array.shape}")
    return np.ascontiguousarray(array[..., ::-1])


def load(checkpoint: str | Path, device: str = "auto") -> Model:
    """Any method's checkpoint as a `Model` on `device` (auto: CUDA, MPS, CPU), BN folded."""
    loaded = load_model(checkpoint)
    inference_model(loaded.model, loaded.config.eval.channels_last, resolve_device(device))
    return Model(loaded)
