"""Frozen BatchNorm folded into the preceding conv for inference (checkpoints stay unfolded):
`bn(conv(x))` is one conv (weight `s W`, bias `s b + t`, s = γ / sqrt(σ² + ε), t = β - μ s), for
every (conv, BN) pair `_conv_norm_pairs` finds (blocks, `nn.Sequential`, fx graphs).

Only convs that run `nn.Conv2d.forward` itself are folded. A subclass with its own forward
(EfficientNet's "same" padding, timm's weight-standardised convs) would lose that behaviour in
the plain conv that replaces it, so it keeps its BN."""

import copy

import torch
from torch import nn

from cagnet.models.backbone import ConvBatchNorm, FrozenBatchNorm2d, Stem


def folded_conv(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> nn.Conv2d:
    """One conv equal to `norm(conv(x))`, computed in float64, without gradients."""
    scale = norm.weight.double() * torch.rsqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() - norm.running_mean.double() * scale
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, conv.dilation, conv.groups, True, conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(bias * scale + shift)
    return folded.requires_grad_(False)


def is_plain_conv(module: nn.Module) -> bool:
    """A 2-d conv whose forward is `nn.Conv2d`'s own (so a plain conv can stand in for it)."""
    return isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names, under `module`, of (conv, bn) pairs whose forward is `bn(conv(x))`."""
    if isinstance(module, torch.fx.GraphModule):
        return [(node.args[0].target, node.target) for node in module.graph.nodes
                if node.op == "call_module" and isinstance(node.args[0], torch.fx.Node)
                and node.args[0].op == "call_module" and len(node.args[0].users) == 1]
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return list(zip(names, names[1:]))
    return [("conv", "bn")] if isinstance(module, (ConvBatchNorm, Stem)) else []


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent), leaf, module)


def fold_batch_norm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`model` in eval mode with its frozen BNs folded: a deep copy unless `inplace` (then the
    state dict changes: never save that model as a checkpoint)."""
    model = model if inplace else copy.deepcopy(model)
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            conv, norm = (module.get_submodule(name) for name in (conv_name, norm_name))
            if is_plain_conv(conv) and isinstance(norm, FrozenBatchNorm2d) \
                    and norm.num_features == conv.out_channels:
                _replace(module, conv_name, folded_conv(conv, norm))
                _replace(module, norm_name, nn.Identity())
    return model.eval()


def inference_model(model: nn.Module, channels_last: bool = False,
                    device: torch.device | str | None = None, inplace: bool = True) -> nn.Module:
    """`model` folded, on `device`, NHWC weights if `channels_last` (eval, predict, export)."""
    model = fold_batch_norm(model, inplace).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
