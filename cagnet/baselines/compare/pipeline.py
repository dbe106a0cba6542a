"""`cagnet compare`: every method on one benchmark, same backbone, data and evaluator.

Stages (each cached, `compare_stages.py`; folders under `<output-dir>/compare/`):

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
import time
from pathlib import Path
from typing import Sequence

from cagnet.baselines.compare.recipe import CompareRecipe, read_compare_recipe
from cagnet.baselines.compare.report import write_comparison
from cagnet.baselines.compare.stages import StageOutcome, run_stage
from cagnet.builders import Benchmark, build_benchmark, resolve_path
from cagnet.config import Config, config_to_dict, load_config
from cagnet.engine.evaluate import describe_protocol
from cagnet.errors import ConfigError

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
        from cagnet.engine.demo import prepare_shapes, pretrained_init

        data_dir = self.output_dir / "shapes"
        embeddings = prepare_shapes(data_dir, self.recipe.benchmark_seed)
        self.paths = [f"data.root={data_dir}", f"embeddings.path={embeddings}",
                      f"pretrain.corpus={data_dir / 'pretrain'}"]
        probe = self.config("cagnet_step1")
        init = pretrained_init(probe, self.output_dir / "pretrain")
        self.paths.append(f"model.init={init}")

    def run(self) -> dict:
        from cagnet.baselines.compare import methods

        started = time.perf_counter()
        self.prepare_benchmark()
        step1_config = self.config("cagnet_step1")
        benchmark = build_benchmark(step1_config)
        if not benchmark.split.validation_ids:
            raise ConfigError(
                f"{resolve_path(step1_config.data.split, step1_config.data.root)}: SPNet-c "
                "chooses T on held-out validation classes, but this split has no "
                "'validation:' list (shapes: data/shapes/split_validation.yaml)")
        entries = {}
        step1 = methods.cagnet(self, entries)
        methods.spnet(self, entries, benchmark)
        methods.zs3net(self, entries, step1)
        methods.cagnet_self_training(self, entries)
        methods.zs3net_self_training(self, entries)
        for entry in entries.values():
            entry["scores"]["class_iou"] = dict(zip(benchmark.split.model_class_names,
                                                    entry.pop("iou", [])))
        minutes = (time.perf_counter() - started) / 60
        self.write(entries, step1_config, benchmark, minutes)
        return entries

    def write(self, entries: dict, config: Config, benchmark: Benchmark, minutes: float) -> None:
        split = benchmark.split
        evaluation = describe_protocol(config.eval.protocol, config.eval.warp_size)
        reused = [name for name, outcome in self.outcomes.items() if outcome.reused]
        notes = [f"benchmark: {config.data.root} ({split.num_seen} seen / {split.num_unseen} "
                 f"unseen classes; validation classes "
                 f"{[split.class_names[i] for i in split.validation_ids]})",
                 f"backbone init: {config.model.init or 'Kaiming (no init file)'}",
                 f"wall time of this command: {minutes:.1f} min"
                 + (f" (stages reused from an earlier run: {', '.join(reused)})"
                    if reused else "")]
        stages = {name: {"run": str(outcome.run_dir), "seconds": round(outcome.seconds, 1),
                         "reused": outcome.reused} for name, outcome in self.outcomes.items()}
        title = f"{config.name}: SPNet, SPNet-c, ZS3Net, CaGNet and their self-training variants"
        markdown, _ = write_comparison(self.output_dir, entries, title, evaluation, notes,
                                       {"stages": stages,
                                        "recipe": str(self.recipe.path)})
        print(markdown.read_text(encoding="utf-8"))


def entry(outcome: StageOutcome, description: str, **protocol) -> dict:
    """One method's compare.json entry from the stage that produced its model."""
    scores = {key: outcome.scores.get(key) for key in SCORE_KEYS}
    return {"scores": scores, "iou": list(outcome.scores.get("iou", [])),
            "protocol": {"method": description, **protocol}, "run": str(outcome.run_dir),
            "checkpoint": str(outcome.checkpoint)}


def run_compare(recipe_path: str | Path, output_dir: str | Path, overrides: Sequence[str] = (),
                fresh: bool = False, show_progress: bool = True) -> dict:
    """`cagnet compare`: run (or reuse) every stage and write compare.md / compare.json."""
    recipe = read_compare_recipe(recipe_path)
    return ComparePipeline(recipe, Path(output_dir), overrides, fresh, show_progress).run()


def clean_folder(path: Path) -> Path:
    """An empty folder at `path` (a stage that writes many files starts from scratch)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
