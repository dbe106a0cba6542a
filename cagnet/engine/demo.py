"""`cagnet demo`: pretraining, step 1 and finetune on the shapes benchmark, end to end."""

import shutil
import time
from pathlib import Path
from typing import Sequence

from cagnet.config import load_config
from cagnet.datasets.shapes import prepare_shapes
from cagnet.engine.pretrain import pretrained_init
from cagnet.engine.trainer import train
from cagnet.report.tables import format_scores_line

DEFAULT_RECIPE = "shapes"
FINETUNE_RECIPE = "shapes_finetune"


def run_demo(output_dir: Path, recipe: str | None = None, overrides: Sequence[str] = (),
             seed: int = 0) -> dict:
    """Run the demo into `output_dir`; returns the final scores."""
    started = time.perf_counter()
    step1_recipe = recipe or DEFAULT_RECIPE
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
            ("unseen mIoU", "miou_unseen"), ("pixel acc", "pixel_acc"), ("mean acc", "mean_acc")]
    lines = ["| model | " + " | ".join(label for label, _ in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for name, scores in (("step 1 (seen only)", step1), ("CaGNet (finetuned)", final)):
        lines.append(f"| {name} | " + " | ".join(f"{scores[key]:.4f}" for _, key in keys) + " |")
    return "\n".join(lines)
