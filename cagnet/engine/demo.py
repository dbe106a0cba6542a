"""`cagnet demo`: the whole method on the built-in shapes benchmark, end to end.

1. generate the shapes benchmark (once; cached in `<output-dir>/shapes`);
2. build its class embeddings from its word2vec file through gensim (once);
3. pretrain the backbone trunk on the image-level corpus (once; cached by its settings);
4. step 1 (seen classes only) -> `<output-dir>/step1/metrics.json`;
5. finetune with generated unseen features -> `<output-dir>/finetune/`;
6. copy the final model's `metrics.json` and `report.md` to `<output-dir>` and print both
   stages' scores side by side.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Sequence

from cagnet.builders import PROJECT_ROOT
from cagnet.config import Config, load_config
from cagnet.errors import ConfigError

LOGGER = logging.getLogger("cagnet")
DEFAULT_RECIPE = PROJECT_ROOT / "experiments" / "shapes.yaml"
FINETUNE_RECIPE = PROJECT_ROOT / "experiments" / "shapes_finetune.yaml"


def prepare_shapes(data_dir: Path, seed: int) -> Path:
    """Generate the benchmark and its class embeddings unless they already exist."""
    from cagnet.class_embeddings import build_class_embeddings, save_class_embeddings
    from cagnet.datasets.shapes import generate_shapes_benchmark, is_shapes_benchmark
    from cagnet.datasets.splits import read_class_names

    if not is_shapes_benchmark(data_dir):
        LOGGER.info("generating the shapes benchmark in %s", data_dir)
        generate_shapes_benchmark(data_dir, seed=seed)
    embeddings = data_dir / "class_embeddings.npy"
    if not embeddings.is_file():
        names = read_class_names(data_dir / "class_names.txt")
        matrix, metadata = build_class_embeddings(
            names, [("word2vec", str(data_dir / "word_vectors.txt"))])
        save_class_embeddings(embeddings, matrix, metadata)
    return embeddings


def pretrained_init(config: Config, out_dir: Path) -> Path:
    """The pretrained backbone for `config`, trained once and cached by its settings."""
    from cagnet.builders import pretrain_from_config
    from cagnet.config import config_to_dict
    from cagnet.utils.io import atomic_write_json

    signature = {"model": config_to_dict(config)["model"], "embeddings": config.embeddings.path,
                 "pretrain": config_to_dict(config)["pretrain"], "seed": config.train.seed}
    path = out_dir / "backbone_init.pt"
    signature_file = out_dir / "settings.json"
    if path.is_file() and signature_file.is_file() \
            and json.loads(signature_file.read_text()) == signature:
        LOGGER.info("reusing the pretrained backbone %s", path)
        return path
    pretrain_from_config(config, path)
    atomic_write_json(signature_file, signature)
    return path


def run_demo(output_dir: Path, recipe: str | None = None, overrides: Sequence[str] = (),
             seed: int = 0) -> dict:
    """Run the demo into `output_dir`; returns the final scores."""
    from cagnet.engine.trainer import train
    from cagnet.report.tables import format_scores_line

    started = time.perf_counter()
    step1_recipe = Path(recipe) if recipe else DEFAULT_RECIPE
    if not step1_recipe.is_file() or not FINETUNE_RECIPE.is_file():
        raise ConfigError(f"demo recipes not found ({step1_recipe}, {FINETUNE_RECIPE}): run the "
                          "demo from a source checkout installed with `pip install -e .`")
    data_dir = output_dir / "shapes"
    embeddings = prepare_shapes(data_dir, seed)
    paths = [f"data.root={data_dir}", f"embeddings.path={embeddings}",
             f"pretrain.corpus={data_dir / 'pretrain'}"]
    step1_config = load_config(step1_recipe, paths + list(overrides))
    init = pretrained_init(step1_config, output_dir / "pretrain")
    step1_config = load_config(step1_recipe, paths + [f"model.init={init}"] + list(overrides))
    step1 = train(step1_config, output_dir / "step1", overwrite=True)
    finetune_config = load_config(FINETUNE_RECIPE, paths + list(overrides))
    final = train(finetune_config, output_dir / "finetune", overwrite=True,
                  init_checkpoint=step1.checkpoint)
    for name in ("metrics.json", "report.md"):
        shutil.copyfile(output_dir / "finetune" / name, output_dir / name)
    minutes = (time.perf_counter() - started) / 60
    print(comparison_table(step1.scores, final.scores))
    print(f"\nfinal  {format_scores_line(final.scores)}")
    print(f"demo finished in {minutes:.1f} min; metrics: {output_dir / 'metrics.json'}")
    return final.scores


def comparison_table(step1: dict, final: dict) -> str:
    """Markdown table of the step-1 model against the finetuned model."""
    keys = [("hIoU", "hiou"), ("mIoU", "miou"), ("seen mIoU", "miou_seen"),
            ("unseen mIoU", "miou_unseen"), ("pixel acc", "pixel_acc"),
            ("mean acc", "mean_acc")]
    lines = ["| model | " + " | ".join(label for label, _ in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for name, scores in (("step 1 (seen only)", step1), ("CaGNet (finetuned)", final)):
        lines.append(f"| {name} | " + " | ".join(f"{scores[key]:.4f}" for _, key in keys) + " |")
    return "\n".join(lines)
