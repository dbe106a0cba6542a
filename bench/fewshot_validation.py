"""Few-shot settings measured on the VALIDATION images (`data.validation_list`, never the test
list), on the base model of a `cagnet fewshot` run folder: the new-class IoU of CaGNet's
extension with each given setting, and of the two baselines, at each K over several draws of
shot images (the same draws as `cagnet fewshot`). This is how the recipes' few-shot settings
are chosen without looking at the test images.

    python bench/fewshot_validation.py --config shapes_fewshot --output-dir runs/fewshot \\
        --set train.threads=1 --shots 1,5 --draws 3 --baselines \\
        --setting 'half={"network_iterations": 200, "shot_share": 0.5}' \\
        --setting 'quarter={"network_iterations": 200, "shot_share": 0.25}'

`--output-dir` and `--set` must be those of the `cagnet fewshot` run, whose base model (and
benchmark) it reuses: it trains nothing else and writes nothing there. A setting is a JSON
mapping of `extension` keys (`cagnet.baselines.shots.ExtensionSettings`) over the recipe's
`extension`. One line per method, K and draw, then the means, are printed; `--json FILE` also
writes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from cagnet.baselines.compare.pipeline import ComparePipeline  # noqa: E402
from cagnet.baselines.fewshot import FewShotExperiment, read_fewshot_recipe  # noqa: E402
from cagnet.config import find_recipe  # noqa: E402
from cagnet.datasets.build import build_eval_loader  # noqa: E402
from cagnet.engine.checkpoint import load_model  # noqa: E402
from cagnet.engine.evaluate import evaluate_and_report  # noqa: E402
from cagnet.errors import CagnetError  # noqa: E402


def parse_setting(text: str) -> tuple[str, dict]:
    name, separator, value = text.partition("=")
    try:
        mapping = json.loads(value) if separator else None
    except json.JSONDecodeError as error:
        raise CagnetError(f"--setting {text!r}: the value is not JSON ({error})") from None
    if not name or not isinstance(mapping, dict):
        raise CagnetError(f"--setting {text!r}: expected NAME={{JSON mapping of extension keys}}")
    return name, mapping


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the few-shot recipe (name or file)")
    parser.add_argument("--output-dir", required=True, help="the `cagnet fewshot` run folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="the run's --set overrides (repeatable)")
    parser.add_argument("--shots", default="1,5", help="K values (default 1,5)")
    parser.add_argument("--draws", type=int, default=3, help="draws per K (default 3)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                        help="an extension setting to measure (repeatable; none: the recipe's)")
    parser.add_argument("--baselines", action="store_true",
                        help="also the pixel classifier and the synthesised labels")
    parser.add_argument("--json", help="also write the results to this file")
    arguments = parser.parse_args()
    try:
        counts = [int(count) for count in arguments.shots.split(",")]
        settings = dict(parse_setting(text) for text in arguments.setting) or {"recipe": {}}
        recipe = read_fewshot_recipe(find_recipe(arguments.config))
        valid = [field.name for field in dataclasses.fields(recipe.extension)]
        for name, mapping in settings.items():
            if set(mapping) - set(valid):
                raise CagnetError(f"--setting {name}: {sorted(set(mapping) - set(valid))} are "
                                  f"not extension keys; valid: {valid}")
    except (CagnetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pipeline = ComparePipeline(recipe.compare, Path(arguments.output_dir), arguments.overrides,
                               False, False)
    pipeline.work = pipeline.output_dir / "fewshot"
    pipeline.prepare_benchmark()
    experiment = FewShotExperiment(recipe, pipeline)  # reuses (or trains) the base model
    experiment.loader = build_eval_loader(experiment.config, experiment.split, "validation")
    methods = {name: ("cagnet", dataclasses.replace(recipe.extension, **mapping))
               for name, mapping in settings.items()}
    if arguments.baselines:
        methods.update(pixel_classifier=("pixel_classifier", None),
                       synthesised_labels=("synthesised_labels", None))
    results: dict = {}
    for name, (method, extension) in methods.items():
        for count in counts:
            values = []
            for draw in range(arguments.draws):
                started = time.perf_counter()
                shots = experiment.shots(count, draw)
                loaded = load_model(experiment.checkpoint)
                loaded.model.to(experiment.device)
                if method == "cagnet":
                    experiment._cagnet(loaded, shots, draw, extension)
                else:
                    getattr(experiment, "_" + method)(loaded, shots, draw)
                scores = evaluate_and_report(loaded.model, experiment.loader,
                                             experiment.config.eval, experiment.split, {},
                                             experiment.device)
                values.append(float(np.mean([scores["iou"][i] for i in experiment.added])))
                print(f"{name} K={count} draw {draw}: new-class IoU {values[-1]:.4f}, seen mIoU "
                      f"{scores['miou_seen']:.4f} ({time.perf_counter() - started:.0f} s)",
                      flush=True)
            results.setdefault(name, {})[str(count)] = {"mean": float(np.mean(values)),
                                                        "values": values}
    for name, entry in results.items():
        print(f"{name}: " + ", ".join(f"K = {count} {value['mean']:.4f}"
                                      for count, value in entry.items()))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
