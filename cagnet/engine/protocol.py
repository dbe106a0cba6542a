"""The protocol card (`protocol.json`): everything needed to compare one number with another."""

from cagnet.class_embeddings import read_sidecar, sha256_file
from cagnet.config import Config
from cagnet.datasets.build import resolve_path
from cagnet.datasets.splits import ClassSplit

BACKGROUND_NAMES = ("background", "unlabel", "unlabeled", "unlabelled", "_background_")
PROTOCOL_DESCRIPTIONS = {
    "full": "image warped to {warp}x{warp}; logits bilinearly upsampled to each label's original "
            "resolution",
    "original": "image warped to {warp}x{warp}; labels nearest-resized to {warp}x{warp} then "
                "nearest-downsampled to the stride-8 feature grid (original CaGNet protocol)",
}
EVALUATION_RESOLUTION = {
    "full": "the label's original resolution (logits bilinearly upsampled)",
    "original": "the stride-8 feature grid of the warped image (labels nearest-downsampled)",
}


def describe_protocol(protocol: str, warp_size: int) -> str:
    """One sentence on how predictions meet labels under `eval.protocol`."""
    return PROTOCOL_DESCRIPTIONS[protocol].format(warp=warp_size)


def _background(split: ClassSplit) -> str:
    if split.class_names[0].lower() not in BACKGROUND_NAMES:
        return "no background class: only void (255) is ignored"
    if 0 in split.seen_ids:
        return (f"'{split.class_names[0]}' (id 0) is a seen class with its own embedding row, "
                "trained and evaluated (ZS3Net protocol)")
    return (f"'{split.class_names[0]}' (id 0) is not a class: mapped to 255, ignored in "
            "training and evaluation (SPNet / CaGNet protocol)")


def _unseen_training_pixels(config: Config) -> str:
    rule = ("mapped to the ignore label 255 by the training lookup table: no unseen label value "
            "reaches any loss (`cagnet audit` checks the final targets)")
    if config.data.drop_images_with_unseen:
        return ("training images that contain any unseen-class pixel are removed "
                "(data.drop_images_with_unseen, ZS3Net protocol); other non-seen pixels are "
                + rule)
    return "kept images; their unseen-class pixels are " + rule


def protocol_card(config: Config, split: ClassSplit, embedding_dim: int) -> dict:
    """The card as a JSON-ready dict (see the module docstring)."""
    path = resolve_path(config.embeddings.path, config.data.root)
    sources = read_sidecar(path).get("sources", []) if path.is_file() else []
    return {
        "setting": "generalized zero-shot, inductive (unseen classes never labelled in training "
                   "and their test images never seen; every seen and unseen class is a candidate "
                   "at test time)",
        "background": _background(split),
        "unseen_training_pixels": _unseen_training_pixels(config),
        "evaluation": describe_protocol(config.eval.protocol, config.eval.warp_size),
        "evaluation_resolution": EVALUATION_RESOLUTION.get(config.eval.protocol,
                                                           config.eval.protocol),
        "protocol": config.eval.protocol, "dataset_root": str(config.data.root),
        "layout": config.data.layout, "train_list": str(config.data.train_list),
        "test_list": str(config.data.val_list),
        "class_names_file": str(resolve_path(config.data.class_names, config.data.root)),
        "split_file": str(resolve_path(config.data.split, config.data.root)),
        "embeddings": str(path), "embedding_sha256": sha256_file(path) if path.is_file() else None,
        "embedding_dim": int(embedding_dim),
        "embedding_sources": [{"kind": s.get("kind"), "sha256": s.get("sha256")}
                              for s in sources if isinstance(s, dict)],
        "seen_classes": [split.class_names[i] for i in split.seen_ids],
        "unseen_classes": [split.class_names[i] for i in split.unseen_ids],
        "validation_classes": [split.class_names[i] for i in split.validation_ids],
    }
