"""cagnet: zero-shot semantic segmentation with context-aware feature generation (CaGNet).

Importing the package is cheap on purpose: no torch work happens here, so `cagnet --help`
and the data tools start instantly. Subpackages import torch themselves.
"""

__version__ = "0.1.0"
