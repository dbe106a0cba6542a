"""A tiny trunk for the `python:<file.py>:<callable>` route of the tests."""

from torch import nn


def tiny_trunk(pretrained: str) -> nn.Module:
    """Output stride 8, 16 channels, BatchNorm (frozen by cagnet); `pretrained` unused."""
    layers = []
    for index, (inputs, outputs) in enumerate(((3, 8), (8, 12), (12, 16))):
        layers += [nn.Conv2d(inputs, outputs, 3, stride=2, padding=1), nn.BatchNorm2d(outputs),
                   nn.ReLU()]
    return nn.Sequential(*layers)
