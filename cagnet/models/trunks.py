"""Trunks under the ASPP head (`model.trunk`, README "Trunks"): `deeplabv2_resnet101`,
`torchvision:<name>`, `timm:<name>`, `python:<module or file.py>:<callable>`; BatchNorm frozen,
behind the `InputNormalization` each expects."""

import importlib.util
import itertools
from pathlib import Path

import torch
from torch import nn

from cagnet.errors import ConfigError
from cagnet.models.backbone import ASPP, FrozenBatchNorm2d, kaiming_init

NORMALIZATIONS = ("caffe", "imagenet", "centred")


class InputNormalization(nn.Module):
    """Images (B, 3, H, W), BGR 0..255 minus `mean_bgr`, to `imagenet` (RGB in 0..1 minus the
    ImageNet mean, over its std), `centred` (RGB, (x - 127.5) / 127.5) or `caffe` (unchanged)."""

    def __init__(self, kind: str, mean_bgr) -> None:
        super().__init__()
        if kind not in NORMALIZATIONS:
            raise ConfigError(f"model.normalization: expected auto or one of "
                              f"{', '.join(NORMALIZATIONS)}, got {kind!r}")
        self.kind = kind
        mean, std = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                     "centred": ((0.5,) * 3, (0.5,) * 3)}.get(kind, ((0.0,) * 3, (1.0,) * 3))
        for name, values in (("mean_bgr", list(mean_bgr)), ("mean_rgb", mean), ("std_rgb", std)):
            self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "caffe":
            return images
        rgb = (images + self.mean_bgr.to(images.dtype)).flip(1) / 255.0
        return (rgb - self.mean_rgb.to(images.dtype)) / self.std_rgb.to(images.dtype)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """`module`, every `nn.BatchNorm2d` replaced (in place) by an equal `FrozenBatchNorm2d`."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        # Not strict: without affine parameters or running statistics, the defaults stay.
        frozen.load_state_dict(module.state_dict(), strict=False)
        return frozen
    for name, child in module.named_children():
        replacement = freeze_batch_norm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def probe_output(module: nn.Module, height: int, width: int) -> torch.Size:
    """Output shape for a (1, 3, H, W) zero image, in eval mode (modes restored after)."""
    modes = [(child, child.training) for child in module.modules()]
    device = next(itertools.chain(module.parameters(), module.buffers()), torch.zeros(())).device
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(1, 3, height, width, device=device)).shape
    finally:
        for child, mode in modes:
            child.training = mode


class TrunkWithASPP(nn.Module):
    """Any trunk ((B, 3, H, W) -> (B, C, h, w)) + the DeepLab-v2 ASPP -> (B, F, h, w), F =
    `out_channels`; `trunk_channels` C None measures it with one forward of a 64 x 64 image."""

    def __init__(self, trunk: nn.Module, trunk_channels: int | None, out_channels: int,
                 dilations: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        if not dilations:
            raise ConfigError("model.aspp_dilations must list at least one dilation")
        if trunk_channels is None:
            shape = probe_output(trunk, 64, 64)
            if len(shape) != 4:
                raise ConfigError(f"the trunk must return a (B, C, h, w) feature map, it "
                                  f"returns shape {tuple(shape)} for a 64 x 64 image")
            trunk_channels = int(shape[1])
        self.trunk, self.trunk_channels, self.embed_dim = trunk, int(trunk_channels), out_channels
        self.aspp = ASPP(self.trunk_channels, out_channels, tuple(dilations))
        kaiming_init(self.aspp)
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def trunk_forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-activation ASPP output (B, F, h, w)."""
        return self.aspp(self.trunk(images))

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the output for an (H, W) input: one dummy trunk forward per size."""
        key = (int(height), int(width))
        if key not in self._sizes:
            shape = probe_output(self.trunk, *key)
            self._sizes[key] = (int(shape[-2]), int(shape[-1]))
        return self._sizes[key]


class _Endpoint(nn.Module):
    """Output `key` of a feature extractor (torchvision's dict, timm's list)."""

    def __init__(self, extractor: nn.Module, key: str | int) -> None:
        super().__init__()
        self.extractor, self.key = extractor, key

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)[self.key]


def dilate_resnet(resnet: nn.Module, output_stride: int) -> nn.Module:
    """A torchvision ResNet dilated in place (as DeepLab) to output stride 8 or 16 (or kept 32)."""
    stages = {8: ("layer3", "layer4"), 16: ("layer4",), 32: ()}
    if output_stride not in stages:
        raise ConfigError(f"model.output_stride: expected 8, 16 or 32, got {output_stride}")
    for dilation, name in zip((2, 4), stages[output_stride]):  # every 3x3 conv, as DeepLab-v2
        for layer in getattr(resnet, name).modules():
            if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2):
                layer.stride = (1, 1)
            if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
                layer.dilation, layer.padding = (dilation, dilation), (dilation, dilation)
    return resnet


def _load_local(model: nn.Module, path: str, trunk: str) -> None:
    """Load `model.pretrained` when it names a local file (not `none` or `default`)."""
    if path in ("none", "default"):
        return
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.pretrained: weight file not found: {file} (for {trunk})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        lines = str(error).strip().splitlines()
        raise ConfigError(f"model.pretrained: {file} does not fit {trunk}: "
                          f"{lines[0] if lines else error!r}") from None


def _torchvision(name: str, pretrained: str, endpoint: str, output_stride: int) -> nn.Module:
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained == "default"
                                             else None)
    except ValueError as error:
        raise ConfigError(f"model.trunk torchvision:{name}: {error}") from None
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"model.pretrained default: torchvision could not fetch the weights "
                          f"of {name} ({error}); give a local file instead") from None
    _load_local(model, pretrained, f"torchvision:{name}")
    is_resnet = hasattr(model, "layer4")
    if is_resnet:
        dilate_resnet(model, output_stride)
    node = endpoint or ("layer4" if is_resnet else "features")
    try:
        extractor = create_feature_extractor(model, return_nodes={node: "out"})
    except ValueError as error:
        raise ConfigError(f"model.trunk_endpoint: {node!r} is not a node of torchvision:{name} "
                          f"({str(error).splitlines()[0]})") from None
    return _Endpoint(extractor, "out")


def _timm(name: str, pretrained: str, endpoint: str, output_stride: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f'model.trunk timm:{name} needs timm: pip install -e ".[timm]"') from None
    index = int(endpoint) if endpoint else -1
    try:
        model = timm.create_model(name, pretrained=pretrained == "default", features_only=True,
                                  out_indices=(index,), output_stride=output_stride)
    except (RuntimeError, OSError, ValueError) as error:
        raise ConfigError(f"model.trunk timm:{name}: {error}") from None
    _load_local(model, pretrained, f"timm:{name}")
    return _Endpoint(model, 0)


def locate_trunk_file(path: Path) -> Path:
    """`path`, else the same file in this checkout: relative paths from its root, and any
    `examples/<file>.py` in this checkout's examples/ (a run made in another clone)."""
    if path.is_file():
        return path
    checkout = Path(__file__).resolve().parents[2]
    candidates = [] if path.is_absolute() else [checkout / path]
    if path.parent.name == "examples":
        candidates.append(checkout / "examples" / path.name)
    return next((candidate for candidate in candidates if candidate.is_file()), path)


def _python(target: str, pretrained: str, *unused) -> nn.Module:  # no endpoint, no stride
    source, _, attribute = target.rpartition(":")
    try:
        if source.endswith(".py"):
            path = locate_trunk_file(Path(source))
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
        factory = getattr(module, attribute)
    except (ImportError, AttributeError, FileNotFoundError, ValueError) as error:
        raise ConfigError(f"model.trunk python:{target}: cannot load the factory ({error}); "
                          "expected python:<module or file.py>:<callable> (if the file moved "
                          "since the checkpoint was written: --set model.trunk=python:"
                          f"NEW_FILE.py:{attribute})") from None
    trunk = factory(pretrained)
    if not isinstance(trunk, nn.Module):
        raise ConfigError(f"model.trunk python:{target} returned {type(trunk).__name__}, "
                          "expected an nn.Module")
    return trunk


def build_trunk(spec: str, pretrained: str, endpoint: str, output_stride: int,
                normalization: str, mean_bgr) -> nn.Module:
    """A non-DeepLab trunk by recipe name, BatchNorm frozen, behind its input normalisation."""
    kind, _, name = spec.partition(":")
    builders = {"torchvision": _torchvision, "timm": _timm, "python": _python}
    if kind not in builders:
        raise ConfigError(f"model.trunk: expected deeplabv2_resnet101, torchvision:<name>, "
                          f"timm:<name> or python:<module>:<callable>, got {spec!r}")
    trunk = builders[kind](name, pretrained, endpoint, output_stride)
    normalization = "imagenet" if normalization == "auto" else normalization
    return nn.Sequential(InputNormalization(normalization, mean_bgr), freeze_batch_norm(trunk))
