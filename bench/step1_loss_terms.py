"""The step-1 loss terms of a recipe (default `voc12`) on one fixed random batch, so that
anyone can hold them against the original release with the same weights and inputs.

    python bench/step1_loss_terms.py --config voc12 --out runs/loss_terms

The model is the recipe's (ResNet-101 DeepLab-v2 for voc12) with the Kaiming init of
`train.seed`, and the class embeddings are the original release's VOC "fastnvec" rows when
`../shared/data` is beside the repository (its fastText and word2vec pickles, concatenated and
re-normalised), else `--embeddings FILE.npy`. The batch: `train.batch_size` images of
`data.crop_size` pixels, uniform in [-128, 128) (mean-subtracted BGR), and labels drawn per
16x16 block from the seen classes with a quarter of the blocks 255 (so that the original's
raster runs are 16 pixels long on the label grid). Two rows are printed:

- `deterministic`: every dropout off and the latent code = its mean (no reparameterisation
  noise): a function of the weights and the batch alone, comparable with any implementation;
- `train`: the first iteration as `cagnet train` computes it (dropout on, latent sampled), its
  random draws seeded with `train.seed`.

With `--out` the batch (`batch.npz`: images, labels), the weights in the original's key names
(`weights_original_keys.pth`, for its `model.load_state_dict`) and the terms (`terms.json`) are
written there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from cagnet import losses  # noqa: E402
from cagnet.class_embeddings import import_original_pickles  # noqa: E402
from cagnet.config import load_config  # noqa: E402
from cagnet.datasets.splits import read_class_names, read_split  # noqa: E402
from cagnet.utils.distributed import LOCAL  # noqa: E402
from cagnet.engine.steps import step1_terms  # noqa: E402
from cagnet.models.build import build_model  # noqa: E402
from cagnet.tools.original_keys import to_original_key  # noqa: E402
from cagnet.utils.runtime import apply_run_settings  # noqa: E402

SHARED_VOC = REPOSITORY.parent / "shared/data/benchmarks/voc12/cagnet/word_vectors"
BLOCK = 16


def model_class_embeddings(path: str | None, model_ids: list[int]) -> torch.Tensor:
    """(K, E) rows of the model's classes (seen first), from a label-id-indexed matrix."""
    if path:
        matrix = np.load(path)
    else:
        pickles = [SHARED_VOC / "fasttext.pkl", SHARED_VOC / "word2vec.pkl"]
        if not all(pickle.is_file() for pickle in pickles):
            raise SystemExit(f"no {pickles[0].parent}: give --embeddings FILE.npy (one row "
                             "per label id)")
        matrix, _ = import_original_pickles(pickles)
    return torch.from_numpy(np.asarray(matrix, dtype=np.float32)[model_ids])


def random_batch(batch_size: int, crop: int, num_seen: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, crop, crop, generator=generator) * 256 - 128
    blocks = -(-crop // BLOCK)
    labels = torch.randint(0, num_seen, (batch_size, blocks, blocks), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.25] = 255
    labels = labels.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)
    return images, labels[:, :crop, :crop].contiguous()


def terms_of(model, images, labels, config, deterministic: bool) -> dict[str, float]:
    """Every raw step-1 term, as `feature_generation_step` computes them before its update."""
    model.train()
    if deterministic:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
    with torch.no_grad():
        output = model.multi_scale_features(images, sample_latent=not deterministic)
        grid_labels = losses.resize_labels(labels, output.scale1.feature.shape[-2:])
        real_outputs = [model.discriminator(feature) for feature in output.features]
        fake = model.generate(grid_labels, output.scale1.latent)
        terms = step1_terms(model, output, real_outputs, fake, model.discriminator(fake),
                            labels, grid_labels, config.loss, True, LOCAL)
    return {name: float(value) for name, value in sorted(terms.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="voc12", help="recipe name or file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--embeddings", help="class-embedding .npy (default: the original "
                        "release's VOC pickles in ../shared/data)")
    parser.add_argument("--out", help="folder for batch.npz, weights_original_keys.pth, "
                        "terms.json")
    arguments = parser.parse_args()
    config = load_config(arguments.config, ["model.init=", "train.device=cpu",
                                            *arguments.overrides])
    names = read_class_names(REPOSITORY / config.data.class_names)
    split = read_split(REPOSITORY / config.data.split, names)
    num_seen = split.num_seen
    apply_run_settings(config.train.threads, config.train.seed, False)
    embeddings = model_class_embeddings(arguments.embeddings, list(split.model_ids))
    model = build_model("cagnet", config.model, embeddings, num_seen, config.data.mean_bgr)
    images, labels = random_batch(config.train.batch_size, config.data.crop_size, num_seen,
                                  config.train.seed)
    results = {}
    for name in ("deterministic", "train"):
        torch.manual_seed(config.train.seed)
        results[name] = terms_of(model, images, labels, config, name == "deterministic")
        print(f"{name:>13}: " + "  ".join(f"{k} {v:.6g}" for k, v in results[name].items()))
    if arguments.out:
        out = Path(arguments.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "batch.npz", images=images.numpy(), labels=labels.numpy())
        hidden = len(config.model.generator_hidden)
        original = {}
        for key, value in model.state_dict().items():
            try:
                original[to_original_key(key, hidden)] = value
            except KeyError:  # the class-embedding buffer has no original counterpart
                pass
        torch.save(original, out / "weights_original_keys.pth")
        settings = {"config": arguments.config, "overrides": arguments.overrides,
                    "batch_size": config.train.batch_size, "crop": config.data.crop_size,
                    "seed": config.train.seed, "torch": torch.__version__}
        (out / "terms.json").write_text(json.dumps({"settings": settings, **results},
                                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
