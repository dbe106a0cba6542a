"""`cagnet compare`: run (or reuse) every method's stages in order and write the paper-style
table (`compare.md`, `compare.json`); see `pipeline.py` for the stages."""

import time
from pathlib import Path
from typing import Sequence

from cagnet.baselines.compare import methods
from cagnet.baselines.compare.pipeline import ComparePipeline
from cagnet.baselines.compare.recipe import read_compare_recipe
from cagnet.baselines.compare.report import write_comparison
from cagnet.config import Config
from cagnet.datasets.build import build_split, resolve_path
from cagnet.datasets.splits import ClassSplit
from cagnet.engine.protocol import describe_protocol
from cagnet.errors import ConfigError
from cagnet.metrics import harmonic_mean


def _nanmean(values: list) -> float:
    finite = [value for value in values if value is not None and value == value]
    return sum(finite) / len(finite) if finite else float("nan")


def run_compare(recipe_path: str | Path, output_dir: str | Path, overrides: Sequence[str] = (),
                fresh: bool = False, show_progress: bool = True) -> dict:
    """Run the comparison of `recipe_path` into `output_dir`; returns the entries."""
    started = time.perf_counter()
    pipeline = ComparePipeline(read_compare_recipe(recipe_path), Path(output_dir), overrides,
                               fresh, show_progress)
    pipeline.prepare_benchmark()
    step1_config = pipeline.config("cagnet_step1")
    split = build_split(step1_config)
    if not split.validation_ids:
        raise ConfigError(
            f"{resolve_path(step1_config.data.split, step1_config.data.root)}: SPNet-c "
            "chooses T on held-out validation classes, but this split has no "
            "'validation:' list (shapes: data/shapes/split_validation.yaml)")
    entries: dict = {}
    step1 = methods.cagnet(pipeline, entries)
    methods.spnet(pipeline, entries, split)
    methods.zs3net(pipeline, entries, step1)
    methods.cagnet_self_training(pipeline, entries)
    methods.zs3net_self_training(pipeline, entries)
    if pipeline.recipe.supervised:
        methods.supervised(pipeline, entries, split)
    names = split.class_names
    for method, entry in entries.items():
        order = split.model_ids if method != "supervised" else split.seen_ids + split.unseen_ids
        entry["scores"]["class_iou"] = dict(zip([names[i] for i in order], entry.pop("iou", [])))
    if "supervised" in entries:  # its means over the zero-shot split's seen / unseen classes
        scores = entries["supervised"]["scores"]
        seen, unseen = ([scores["class_iou"][names[i]] for i in ids]
                        for ids in (split.seen_ids, split.unseen_ids))
        scores["miou_seen"], scores["miou_unseen"] = _nanmean(seen), _nanmean(unseen)
        scores["hiou"] = harmonic_mean(scores["miou_seen"], scores["miou_unseen"])
    _write(pipeline, entries, step1_config, split, (time.perf_counter() - started) / 60)
    return entries


def _write(pipeline: ComparePipeline, entries: dict, config: Config, split: ClassSplit,
           minutes: float) -> None:
    reused = [name for name, outcome in pipeline.outcomes.items() if outcome.reused]
    notes = [f"benchmark: {config.data.root} ({split.num_seen} seen / {split.num_unseen} "
             f"unseen classes; validation classes "
             f"{[split.class_names[i] for i in split.validation_ids]})",
             f"backbone init: {config.model.init or 'Kaiming (no init file)'}",
             f"wall time of this command: {minutes:.1f} min"
             + (f" (stages reused from an earlier run: {', '.join(reused)})" if reused else "")]
    stages = {name: {"run": str(outcome.run_dir), "seconds": round(outcome.seconds, 1),
                     "reused": outcome.reused} for name, outcome in pipeline.outcomes.items()}
    title = f"{config.name}: SPNet, SPNet-c, ZS3Net, CaGNet and their self-training variants"
    evaluation = describe_protocol(config.eval.protocol, config.eval.warp_size)
    markdown, _ = write_comparison(pipeline.output_dir, entries, title, evaluation, notes,
                                   {"stages": stages, "recipe": str(pipeline.recipe.path)})
    print(markdown.read_text(encoding="utf-8"))
