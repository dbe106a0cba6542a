"""Shared fixtures: a tiny synthetic VOC-style benchmark written into a temporary folder, and
the location of the read-only reference data (`../shared/data`), which may be absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"

CLASS_NAMES = ["background", "red circle", "blue circle", "red square", "blue square"]


def write_tiny_voc(root: Path, num_images: int = 6, size: tuple[int, int] = (40, 48),
                   seed: int = 0) -> Path:
    """A VOC-style folder with random blocky masks over 4 classes (ids 1..4; 3 seen, 1 unseen),
    a class-name file, a split file and a 4-d one-hot-ish embedding file."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    ids = [f"img_{index:03d}" for index in range(num_images)]
    palette = [0] * 768
    for class_id, colour in enumerate([(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0),
                                       (0, 0, 128)]):
        palette[3 * class_id:3 * class_id + 3] = colour
    for name in ids:
        height, width = size
        mask = np.zeros((height, width), dtype=np.uint8)
        for class_id in range(1, 5):
            top, left = rng.integers(0, height - 10), rng.integers(0, width - 10)
            mask[top:top + 10, left:left + 10] = class_id
        mask[0, :] = 255
        image = np.stack([mask * 40 % 255, mask * 70 % 255, mask * 20 % 255], -1)
        image = (image + rng.integers(0, 30, image.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:-2]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[-2:]) + "\n")
    (root / "class_names.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    (root / "split.yaml").write_text("seen: [red circle, blue circle, red square]\n"
                                     "unseen: [blue square]\n")
    words = {"red": [1.0, 0, 0, 0], "blue": [0, 1.0, 0, 0], "circle": [0, 0, 1.0, 0],
             "square": [0, 0, 0, 1.0]}
    rows = [[0.5, 0.5, 0.5, 0.5]]
    for name in CLASS_NAMES[1:]:
        colour, shape = name.split()
        row = np.add(words[colour], words[shape])
        rows.append(list(row / np.linalg.norm(row)))
    np.save(root / "class_embeddings.npy", np.asarray(rows, dtype=np.float32))
    return root


@pytest.fixture()
def tiny_voc(tmp_path: Path) -> Path:
    return write_tiny_voc(tmp_path / "tiny_voc")


# Overrides that shrink bench/cpu_reference.yaml to a tiny model (bench harness tests).
BENCH_TINY = ["model.blocks_per_stage=[1,1,1,1]", "model.base_width=4",
              "model.context_channels=8", "model.generator_hidden=[16,16]",
              "model.generator_dropout=[0.1,0.1]", "model.discriminator_hidden=16",
              "data.crop_size=33", "eval.warp_size=41", "train.threads=1"]


def tiny_config_overrides(root: Path) -> list[str]:
    """Overrides that shrink the paper recipe to seconds on a CPU."""
    return [
        f"data.root={root}", "data.class_names=class_names.txt", "data.split=split.yaml",
        "data.train_list=ImageSets/Segmentation/train.txt",
        "data.val_list=ImageSets/Segmentation/val.txt", "data.label_dir=SegmentationClass",
        "data.warp_size=41", "data.crop_size=33", "data.num_workers=0",
        f"embeddings.path={root / 'class_embeddings.npy'}",
        "model.blocks_per_stage=[1,1,1,1]", "model.base_width=4", "model.aspp_dilations=[1,2]",
        "model.feature_dim=4",
        "model.context_channels=8", "model.generator_hidden=[16,16]",
        "model.generator_dropout=[0.1,0.1]", "model.discriminator_hidden=16", "model.init=",
        "train.batch_size=2", "train.iterations=4", "train.log_interval=2",
        "train.checkpoint_interval=2", "train.device=cpu", "train.threads=1",
        "eval.warp_size=41", "loss.mmd_sigmas=[1,2]",
    ]


def tiny_training_setup(root: Path, extra: tuple[str, ...] = (), train_backbone: bool = True):
    """A tiny CaGNet in train mode with its optimisers (rates of iteration 0) and one batch of
    two training samples: (config, model, optimizers, batch)."""
    import torch

    from cagnet.datasets.build import build_benchmark, build_dataset
    from cagnet.models.build import build_cagnet
    from cagnet.config import load_config
    from cagnet.datasets.segmentation import collate_samples
    from cagnet.engine.optim import build_optimizers, set_learning_rates

    config = load_config(None, tiny_config_overrides(root) + list(extra))
    benchmark = build_benchmark(config)
    torch.manual_seed(0)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    optimizers = build_optimizers(model, config.optim, train_backbone)
    set_learning_rates(optimizers, 0, config.train.iterations, config.optim)
    dataset = build_dataset(config.data, benchmark.split, seed=0)
    batch = collate_samples([dataset[(0, 0)], dataset[(1, 1)]])
    return config, model.train(), optimizers, batch
