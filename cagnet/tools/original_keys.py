"""State-dict key names of foreign weight files (method.md §6) mapped onto this project's names:
original CaGNet checkpoints, DeepLab-v2 init files (the same DeepLab-v2 names without the
`back.scale.` prefix) and torchvision ResNets. Names only: `import_original.py` checks shapes."""

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
_TV_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(conv1|bn1|conv2|bn2|conv3|bn3|downsample\.0|"
                       r"downsample\.1)\.(\w+)")
_TV_PARTS = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv",
             "bn2": "conv3x3.bn", "conv3": "increase.conv", "bn3": "increase.bn",
             "downsample.0": "projection.conv", "downsample.1": "projection.bn"}


def trunk_key(key: str) -> str | None:
    """DeepLab-v2 trunk name -> backbone-relative name, or None: `layer1.conv1.bn.running_mean`
    -> `stem.bn.running_mean`, `layer4.block23.proj.conv.weight` -> `res4.22.projection.conv.weight`
    (`blockM` is 1-based)."""
    if match := _STEM.fullmatch(key):
        return f"stem.{match[1]}.{match[2]}"
    if match := _BLOCK.fullmatch(key):
        stage, block, part, layer, name = match.groups()
        return f"res{stage}.{int(block) - 1}.{part.replace('proj', 'projection')}.{layer}.{name}"
    return None


def aspp_key(key: str) -> str | None:
    """`aspp.stages.c2.bias` -> `aspp.branches.2.bias`, or None."""
    match = _ASPP.fullmatch(key)
    return f"aspp.branches.{match[1]}.{match[2]}" if match else None


def original_key(key: str, num_generator_hidden: int) -> str | None:
    """Original CaGNet checkpoint key -> project state-dict key, or None when it maps nowhere
    (also for the embedding tables `Em_vis` / `Em_all`, which are not model keys)."""
    if key.startswith(ORIGINAL_BACKBONE_PREFIX):
        inner = key[len(ORIGINAL_BACKBONE_PREFIX):]
        mapped = trunk_key(inner) or aspp_key(inner)
        return f"backbone.{mapped}" if mapped else _CONTEXT.get(inner)
    for prefix, target in _HEADS.items():
        if key.startswith(prefix) and key[len(prefix):] in ("weight", "bias"):
            return target + key[len(prefix):]
    match = _GENERATOR_HIDDEN.fullmatch(key)
    if match and int(match[1]) < num_generator_hidden:
        return f"generator.hidden_layers.{match[1]}.conv.{match[2]}"
    match = _GENERATOR_OUTPUT.fullmatch(key)
    if match and int(match[1]) == num_generator_hidden:
        return f"generator.output.{match[2]}"
    return None


def torchvision_trunk_key(key: str) -> str | None:
    """torchvision ResNet key -> backbone-relative name, or None (`fc.*` and the like):
    `bn1.running_var` -> `stem.bn.running_var`, `layer3.5.conv2.weight` ->
    `res4.5.conv3x3.conv.weight`, `downsample.{0,1}` -> `projection.{conv,bn}`. torchvision (v1.5)
    strides on the 3x3 conv, DeepLab on the 1x1 reduce conv (res3 here): same shapes, another
    function, so these weights are an initialisation, not a conversion."""
    if key == "conv1.weight":
        return "stem.conv.weight"
    if key.startswith("bn1."):
        return "stem.bn." + key[len("bn1."):]
    if match := _TV_BLOCK.fullmatch(key):
        stage, block, part, name = match.groups()
        return f"res{int(stage) + STAGE_OFFSET}.{block}.{_TV_PARTS[part]}.{name}"
    return None


def to_original_key(project_key: str, num_generator_hidden: int) -> str:
    """The inverse of `original_key`. Raises KeyError for keys with no original counterpart
    (`class_embeddings`)."""
    prefix = ORIGINAL_BACKBONE_PREFIX
    if match := re.fullmatch(r"backbone\.stem\.(conv|bn)\.(\w+)", project_key):
        return f"{prefix}layer1.conv1.{match[1]}.{match[2]}"
    if match := re.fullmatch(r"backbone\.res([2-5])\.(\d+)\.(reduce|conv3x3|increase|projection)"
                             r"\.(conv|bn)\.(\w+)", project_key):
        stage, index, part, layer, name = match.groups()
        part = part.replace("projection", "proj")
        return f"{prefix}layer{stage}.block{int(index) + 1}.{part}.{layer}.{name}"
    if match := re.fullmatch(r"backbone\.aspp\.branches\.(\d+)\.(weight|bias)", project_key):
        return f"{prefix}aspp.stages.c{match[1]}.{match[2]}"
    for original, project in _CONTEXT.items():
        if project == project_key:
            return prefix + original
    for original, project in _HEADS.items():
        if project_key.startswith(project):
            return original + project_key[len(project):]
    if match := re.fullmatch(r"generator\.hidden_layers\.(\d+)\.conv\.(weight|bias)", project_key):
        return f"gen.mlp.{match[1]}.conv.{match[2]}"
    if match := re.fullmatch(r"generator\.output\.(weight|bias)", project_key):
        return f"gen.mlp.{num_generator_hidden}.{match[1]}"
    raise KeyError(f"{project_key} has no counterpart in the original CaGNet format")
