"""cagnet: zero-shot semantic segmentation with context-aware feature generation (CaGNet).
Importing the package does no torch work, so `cagnet --help` and the data tools start instantly."""

__version__ = "0.1.0"


def load(checkpoint, device: str = "auto"):
    """`cagnet.load(checkpoint)` -> a `cagnet.inference.api.Model` with `predict(image)`,
    `class_names` and `add_classes(names, ...)`; torch is imported on the first call."""
    from cagnet.inference.api import load as load_checkpoint

    return load_checkpoint(checkpoint, device)
