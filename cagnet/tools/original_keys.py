"""State-dict key names of foreign weight files, mapped onto this project's module names.

Three formats (method.md §6):

- **Original CaGNet checkpoints** (`{"iteration", "state_dict"}` of the original `OurModel`):
  `back.scale.` + DeepLab-v2 names for the backbone and contextual module, `gen.mlp.*`,
  `dis.{fc.conv,pred,cls}.*` and the frozen tables `Em_vis.weight` / `Em_all.weight`.
- **DeepLab-v2 init files** (`deeplabv2_resnet101_init.pth`): the same DeepLab-v2 names without
  a prefix (`layer2.block1.reduce.conv.weight`): `layer1.conv1` is the stem, `layerN` (2..5) is
  `resN`, `blockM` (1-based) is block `M - 1`, `proj` is the projection shortcut.
- **torchvision ResNets** (`conv1.weight`, `layer1.0.conv1.weight`, `layer1.0.downsample.0`):
  `layerX.Y.{conv1,conv2,conv3}` are `res{X+1}.Y.{reduce,conv3x3,increase}` and `downsample.{0,1}`
  the projection's conv / BN. torchvision (v1.5) puts a stage's stride on the 3x3 conv, DeepLab
  on the 1x1 reduce conv: the shapes are identical, the function differs (only in res3 here,
  the one strided stage), so torchvision weights are an initialisation, not a conversion.

The functions map names only; `cagnet/engine/import_original.py` checks shapes and values.
`num_batches_tracked` buffers map like their BatchNorm's other entries (our frozen BatchNorm has
none, so the importer consumes and drops them).
"""

from __future__ import annotations

import re

ORIGINAL_BACKBONE_PREFIX = "back.scale."
EMBEDDING_TABLES = ("Em_vis.weight", "Em_all.weight")
STAGE_OFFSET = 1  # original layerN / torchvision layer(N-1) -> resN

_STEM = re.compile(r"layer1\.conv1\.(conv|bn)\.(\w+)")
_BLOCK = re.compile(r"layer([2-5])\.block([1-9]\d*)\.(reduce|conv3x3|increase|proj)\.(conv|bn)"
                    r"\.(\w+)")
_ASPP = re.compile(r"aspp\.stages\.c(\d+)\.(weight|bias)")
_CONTEXT = {"contextual1.conv.weight": "context.context_convs.0.weight",
            "contextual2.conv.weight": "context.context_convs.1.weight",
            "contextual3.conv.weight": "context.context_convs.2.weight",
            "fc_1.conv.weight": "context.selector.weight",
            "contextualpool.conv.weight": "context.pool.weight",
            "contextuallocalmu.conv.weight": "context.latent_mean.weight",
            "contextuallocalsigma.conv.weight": "context.latent_logvar.weight"}
_HEADS = {"dis.fc.conv.": "discriminator.trunk.conv.",
          "dis.pred.": "discriminator.adversarial_head.",
          "dis.cls.": "discriminator.classifier."}
_GENERATOR_HIDDEN = re.compile(r"gen\.mlp\.(\d+)\.conv\.(weight|bias)")
_GENERATOR_OUTPUT = re.compile(r"gen\.mlp\.(\d+)\.(weight|bias)")
_TV_STEM = {"conv1.weight": "stem.conv.weight"}
_TV_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(conv1|bn1|conv2|bn2|conv3|bn3|downsample\.0|"
                       r"downsample\.1)\.(\w+)")
_TV_PARTS = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv",
             "bn2": "conv3x3.bn", "conv3": "increase.conv", "bn3": "increase.bn",
             "downsample.0": "projection.conv", "downsample.1": "projection.bn"}


def trunk_key(key: str) -> str | None:
    """DeepLab-v2 trunk name -> backbone-relative name, or None.

    `layer1.conv1.bn.running_mean` -> `stem.bn.running_mean`;
    `layer4.block23.proj.conv.weight` -> `res4.22.projection.conv.weight`."""
    match = _STEM.fullmatch(key)
    if match:
        return f"stem.{match.group(1)}.{match.group(2)}"
    match = _BLOCK.fullmatch(key)
    if match:
        stage, block, part, layer, name = match.groups()
        part = "projection" if part == "proj" else part
        return f"res{stage}.{int(block) - 1}.{part}.{layer}.{name}"
    return None


def aspp_key(key: str) -> str | None:
    """`aspp.stages.c2.bias` -> `aspp.branches.2.bias`, or None."""
    match = _ASPP.fullmatch(key)
    return f"aspp.branches.{match.group(1)}.{match.group(2)}" if match else None


def original_key(key: str, num_generator_hidden: int) -> str | None:
    """Original CaGNet checkpoint key -> project state-dict key, or None when it maps nowhere
    (the embedding tables `Em_vis` / `Em_all` are not model keys and also give None)."""
    if key.startswith(ORIGINAL_BACKBONE_PREFIX):
        inner = key[len(ORIGINAL_BACKBONE_PREFIX):]
        mapped = trunk_key(inner) or aspp_key(inner)
        if mapped:
            return f"backbone.{mapped}"
        return _CONTEXT.get(inner)
    for prefix, target in _HEADS.items():
        if key.startswith(prefix) and key[len(prefix):] in ("weight", "bias"):
            return target + key[len(prefix):]
    match = _GENERATOR_HIDDEN.fullmatch(key)
    if match and int(match.group(1)) < num_generator_hidden:
        return f"generator.hidden_layers.{match.group(1)}.conv.{match.group(2)}"
    match = _GENERATOR_OUTPUT.fullmatch(key)
    if match and int(match.group(1)) == num_generator_hidden:
        return f"generator.output.{match.group(2)}"
    return None


def torchvision_trunk_key(key: str) -> str | None:
    """torchvision ResNet key -> backbone-relative name, or None (`fc.*` and the like).

    `bn1.running_var` -> `stem.bn.running_var`; `layer1.0.downsample.0.weight` ->
    `res2.0.projection.conv.weight`; `layer3.5.conv2.weight` -> `res4.5.conv3x3.conv.weight`."""
    if key in _TV_STEM:
        return _TV_STEM[key]
    if key.startswith("bn1."):
        return "stem.bn." + key[len("bn1."):]
    match = _TV_BLOCK.fullmatch(key)
    if match:
        stage, block, part, name = match.groups()
        return f"res{int(stage) + STAGE_OFFSET}.{block}.{_TV_PARTS[part]}.{name}"
    return None


def to_original_key(project_key: str, num_generator_hidden: int) -> str:
    """The inverse of `original_key`: project key -> original CaGNet key (for export and
    tests). Raises KeyError for keys with no original counterpart (`class_embeddings`)."""
    backbone = re.fullmatch(r"backbone\.(.+)", project_key)
    if backbone:
        inner = backbone.group(1)
        stem = re.fullmatch(r"stem\.(conv|bn)\.(\w+)", inner)
        block = re.fullmatch(r"res([2-5])\.(\d+)\.(reduce|conv3x3|increase|projection)\."
                             r"(conv|bn)\.(\w+)", inner)
        aspp = re.fullmatch(r"aspp\.branches\.(\d+)\.(weight|bias)", inner)
        if stem:
            return f"{ORIGINAL_BACKBONE_PREFIX}layer1.conv1.{stem.group(1)}.{stem.group(2)}"
        if block:
            stage, index, part, layer, name = block.groups()
            part = "proj" if part == "projection" else part
            return (f"{ORIGINAL_BACKBONE_PREFIX}layer{stage}.block{int(index) + 1}.{part}."
                    f"{layer}.{name}")
        if aspp:
            return f"{ORIGINAL_BACKBONE_PREFIX}aspp.stages.c{aspp.group(1)}.{aspp.group(2)}"
    for original, project in _CONTEXT.items():
        if project == project_key:
            return ORIGINAL_BACKBONE_PREFIX + original
    for original, project in _HEADS.items():
        if project_key.startswith(project):
            return original + project_key[len(project):]
    hidden = re.fullmatch(r"generator\.hidden_layers\.(\d+)\.conv\.(weight|bias)", project_key)
    if hidden:
        return f"gen.mlp.{hidden.group(1)}.conv.{hidden.group(2)}"
    output = re.fullmatch(r"generator\.output\.(weight|bias)", project_key)
    if output:
        return f"gen.mlp.{num_generator_hidden}.{output.group(1)}"
    raise KeyError(f"{project_key} has no counterpart in the original CaGNet format")
