"""`cagnet compare`: every method on one benchmark, same backbone, data and evaluator.

`ComparePipeline` holds the recipe, the stage configs and the cached stages; `methods.py` runs
each method's stages through it, `run.py` puts them in order and writes the table.

Stages (each cached, `stages.py`; folders under `<output-dir>/compare/`):

1. `cagnet/step1`: CaGNet step 1. Its checkpoint is THE step-1 network of the comparison:
   CaGNet's finetune, ZS3Net and both self-training variants start from it.
2. `cagnet/finetune`: the mixed schedule -> **cagnet**.
3. `spnet`: SPNet, its own backbone from the same init -> **spnet**.
4. `spnet_validation` + `spnet_c`: SPNet trained without the split's validation classes picks T
   on them; T is applied to `spnet` -> **spnet_c** (never chosen on test unseen classes).
5. `zs3net`: GMMN + retrained classifier on the step-1 features -> **zs3net**.
6. `cagnet_st/{pseudo_labels,step1,finetune}`: pseudo-labels from the CaGNet model (top-p),
   then step 1 and the mixed finetune on them -> **cagnet_st**.
7. `zs3net_st/{pseudo_labels,step1,zs3net}`: pseudo-labels from the ZS3Net model (top-p %),
   step 1 on them, then ZS3Net's stage on the new features -> **zs3net_st**.

With `shapes_benchmark: true` the benchmark and the pretrained init come from
`<output-dir>/shapes` and `<output-dir>/pretrain` exactly as `cagnet demo` makes them, so
pointing both commands at one folder generates and pretrains once.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

from cagnet.baselines.compare.recipe import CompareRecipe
from cagnet.baselines.compare.stages import StageOutcome, run_stage
from cagnet.config import Config, config_to_dict, load_config
from cagnet.datasets.shapes import prepare_shapes
from cagnet.engine.pretrain import pretrained_init

LOGGER = logging.getLogger("cagnet")
SCORE_KEYS = ("hiou", "miou", "miou_seen", "miou_unseen", "pixel_acc", "mean_acc", "num_pixels")


class ComparePipeline:
    """The stages of one comparison (see the module docstring); `run()` returns the entries."""

    def __init__(self, recipe: CompareRecipe, output_dir: Path, overrides: Sequence[str] = (),
                 fresh: bool = False, show_progress: bool = True) -> None:
        self.recipe, self.output_dir = recipe, Path(output_dir)
        self.work = self.output_dir / "compare"
        self.cli_overrides, self.fresh, self.show_progress = list(overrides), fresh, show_progress
        self.paths: list[str] = []
        self.outcomes: dict[str, StageOutcome] = {}

    def config(self, stage: str, *fixed: str) -> Config:
        """The stage's recipe with the benchmark paths, the recipe's and the stage's overrides,
        the command line's, and last the stage's fixed settings."""
        stage_recipe = self.recipe.stages[stage]
        return load_config(stage_recipe.recipe, self.paths + self.recipe.overrides
                           + stage_recipe.overrides + self.cli_overrides + list(fixed))

    def stage(self, name: str, run_dir: Path, config: Config | dict, inputs: dict, action
              ) -> StageOutcome:
        signature = {"config": config_to_dict(config) if isinstance(config, Config) else config}
        outcome = run_stage(name, run_dir, signature, inputs, action, self.fresh)
        self.outcomes[name] = outcome
        return outcome

    def prepare_benchmark(self) -> None:
        """Shapes: generate / reuse the benchmark and the pretrained init (`cagnet demo`)."""
        if not self.recipe.shapes_benchmark:
            return
        data_dir = self.output_dir / "shapes"
        embeddings = prepare_shapes(data_dir, self.recipe.benchmark_seed)
        self.paths = [f"data.root={data_dir}", f"embeddings.path={embeddings}",
                      f"pretrain.corpus={data_dir / 'pretrain'}"]
        probe = self.config("cagnet_step1")
        init = pretrained_init(probe, self.output_dir / "pretrain", self.show_progress)
        self.paths.append(f"model.init={init}")


def entry(outcome: StageOutcome, description: str, **protocol) -> dict:
    """One method's compare.json entry from the stage that produced its model."""
    scores = {key: outcome.scores.get(key) for key in SCORE_KEYS}
    return {"scores": scores, "iou": list(outcome.scores.get("iou", [])),
            "protocol": {"method": description, **protocol}, "run": str(outcome.run_dir),
            "checkpoint": str(outcome.checkpoint)}


def clean_folder(path: Path) -> Path:
    """An empty folder at `path` (a stage that writes many files starts from scratch)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
