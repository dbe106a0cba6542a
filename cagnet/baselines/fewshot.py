"""`cagnet fewshot`: new-class IoU against the number K of labelled training images (shots) for
CaGNet's extension and two baselines (`shots.py`), over random draws of the shot images; stages
are cached like `cagnet compare`'s, under <output-dir>/fewshot/ (recipe keys documented in
`experiments/shapes_fewshot.yaml`)."""

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cagnet.baselines.compare import methods
from cagnet.baselines.compare.pipeline import ComparePipeline
from cagnet.baselines.compare.recipe import (CompareRecipe, StageRecipe, _recipe_file,
                                             _string_list, read_mapping)
from cagnet.baselines.shots import (ExtensionSettings, PixelSettings, ShotImage,
                                    add_unseen_classes,
                                    extend_with_shots, finetune_classifier, frozen_maps,
                                    merge_pools, pool_of, replay_pool, synthesise_labels,
                                    train_pixel_classifier)
from cagnet.datasets.benchmarks import read_dataset_label
from cagnet.datasets.build import build_benchmark, build_dataset, build_eval_loader, build_split
from cagnet.datasets.splits import ClassSplit
from cagnet.engine.checkpoint import LoadedModel, load_model
from cagnet.engine.evaluate import evaluate_and_report
from cagnet.engine.protocol import describe_protocol
from cagnet.errors import ConfigError, DataError
from cagnet.report.curves import curve_chart
from cagnet.report.pictures import write_png
from cagnet.utils.io import atomic_write_json, atomic_write_text
from cagnet.utils.runtime import resolve_device

METHODS = {"cagnet": "CaGNet extension", "cagnet_network": "CaGNet extension, network trained",
           "pixel_classifier": "pixel classifier", "synthesised_labels": "synthesised labels"}
KEYS = ("step1", "finetune", "add_classes", "shapes_benchmark", "benchmark_seed", "seed",
        "overrides", "supervised", "extension", "network", "pixel_classifier")


@dataclasses.dataclass
class FewShotRecipe:
    path: Path
    compare: CompareRecipe  # the base model's and the reference's stages, benchmark, overrides
    add_classes: list[str]
    seed: int
    supervised: bool
    extension: ExtensionSettings  # the frozen network's
    network: ExtensionSettings | None  # "network trained": `extension` plus `network`'s keys
    pixels: PixelSettings


def _settings(kind: type, value: Any, where: str):
    """A settings dataclass from a mapping of some of its fields; errors name the key."""
    defaults = dataclasses.asdict(kind())
    for key, item in (value or {}).items() if isinstance(value, (dict, type(None))) \
            else [("(not a mapping)", value)]:
        default = defaults.get(key, ...)
        if default is ... or default is not None and not isinstance(item, type(default)) \
                and not (isinstance(default, float) and isinstance(item, int)):
            raise ConfigError(f"{where}: {key}: {item!r} is not a valid key and value; valid "
                              f"keys (defaults): {defaults}")
    return kind(**(value or {}))


def read_fewshot_recipe(path: str | Path) -> FewShotRecipe:
    """Read and check a few-shot recipe; errors name the file and the key."""
    path = Path(path)
    content = read_mapping(path, KEYS, "few-shot recipe")
    names, numbers = content.get("add_classes"), [content.get(k, 0) for k in KEYS[4:6]]
    if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
            or not all(isinstance(n, int) for n in numbers):
        raise ConfigError(f"{path}: expected add_classes: a list of class names (got {names!r})"
                          f", and integer benchmark_seed and seed")
    step1, finetune = (_recipe_file(path.parent, content.get(key), f"{path}: {key}")
                       for key in KEYS[:2])
    supervised = content.get("supervised", [])
    stages = {"cagnet_step1": StageRecipe(step1), "cagnet_finetune": StageRecipe(finetune),
              "supervised": StageRecipe(step1, _string_list(supervised or None,
                                                            f"{path}: supervised"))}
    compare = CompareRecipe(path, bool(content.get("shapes_benchmark")), numbers[0], "",
                            _string_list(content.get("overrides"), f"{path}: overrides"), stages)
    extension = _settings(ExtensionSettings, content.get("extension"), f"{path}: extension")
    if extension.network_iterations:
        raise ConfigError(f"{path}: extension: network_iterations belongs under network: "
                          "{iterations: N, shot_share: F} (its own row of the table)")
    network = _settings(NetworkSettings, content.get("network"), f"{path}: network")
    return FewShotRecipe(
        path, compare, names, numbers[1], supervised is not False, extension,
        dataclasses.replace(extension, network_iterations=network.iterations,
                            shot_share=network.shot_share) if network.iterations else None,
        _settings(PixelSettings, content.get("pixel_classifier"), f"{path}: pixel_classifier"))


@dataclasses.dataclass
class NetworkSettings:
    """The recipe's `network`: step-1 iterations of the whole network on shot and training
    crops before the extension (0: no "network trained" row)."""

    iterations: int = 0
    shot_share: float = ExtensionSettings.shot_share


def check_training_only(shot_ids: Sequence[str], test_ids: Sequence[str]) -> None:
    """Shots come from the training list only: none may be a test image."""
    leaked = sorted(set(shot_ids) & set(test_ids))
    if leaked:
        raise DataError(f"shot images {leaked[:5]} are test images: shots are drawn from the "
                        "training list only")


def _statistics(values: Sequence[float | None]) -> dict:
    found = [value for value in values if value is not None and np.isfinite(value)]
    return {"mean": float(np.mean(found)) if found else None,
            "std": float(np.std(found, ddof=1)) if len(found) > 1 else 0.0 if found else None,
            "values": list(values)}


class FewShotExperiment:
    """The base model, the splits, the data and the stages of one few-shot run. Stages:
    `cagnet/step1` and `cagnet/finetune` (the base model, trained without `add_classes`),
    `supervised` (step 1 with them seen: the reference) and `<method>/k<K>_draw<d>`. Every
    model is evaluated on the test list with the base model's seen and unseen classes, then the
    added ones (unseen)."""

    def __init__(self, recipe: FewShotRecipe, pipeline: ComparePipeline) -> None:
        self.recipe, self.pipeline = recipe, pipeline
        self.config = config = pipeline.config("cagnet_step1")
        full = build_split(config)
        if not set(recipe.add_classes) <= set(full.model_class_names):
            raise ConfigError(f"{recipe.path}: add_classes {recipe.add_classes} must be classes "
                              f"of the split {config.data.split} (seen or unseen)")
        added = tuple(full.class_names.index(name) for name in recipe.add_classes)
        self.base = ClassSplit(full.class_names, *(tuple(i for i in ids if i not in added)
                                                   for ids in (full.seen_ids, full.unseen_ids)))
        self.split = ClassSplit(full.class_names, self.base.seen_ids,
                                self.base.unseen_ids + added)
        self.added = list(range(len(self.base.model_ids), len(self.split.model_ids)))
        self.rows = torch.as_tensor(build_benchmark(config).class_embeddings[
            [full.model_ids.index(i) for i in added]])
        self.device = resolve_device(config.train.device)
        pipeline.recipe.overrides.append(f"data.split={self._split_file('base', self.base)}")
        methods.cagnet(pipeline, {})
        self.checkpoint = pipeline.outcomes["cagnet_finetune"].checkpoint
        self.train_set = build_dataset(config.data, self.base, config.train.seed, "train",
                                       eval_warp=config.eval.warp_size)
        self.loader = build_eval_loader(config, self.split)
        test_ids, wanted = set(self.loader.dataset.ids), [self.split.model_ids[i]
                                                          for i in self.added]
        self.candidates = [index for index, image_id in enumerate(self.train_set.ids)
                           if image_id not in test_ids and np.isin(read_dataset_label(
                               self.train_set, index), wanted).any()]
        self._replay = None

    def _split_file(self, name: str, split: ClassSplit) -> Path:
        names = split.class_names
        text = (f"seen: {json.dumps([names[i] for i in split.seen_ids])}\n"
                f"unseen: {json.dumps([names[i] for i in split.unseen_ids])}\n")
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        path = self.pipeline.work / "splits" / f"{name}-{digest}.yaml"
        return path.resolve() if path.is_file() else atomic_write_text(path, text).resolve()

    def supervised_iou(self) -> float | None:
        """The added classes' mean IoU after step 1 with them seen (all their labels)."""
        if not self.recipe.supervised:
            return None
        split = ClassSplit(self.split.class_names, self.base.seen_ids + self.split.model_ids[
            len(self.base.model_ids):], self.base.unseen_ids)
        config = self.pipeline.config("supervised", "baseline.method=cagnet",
                                      f"data.split={self._split_file('supervised', split)}")
        ious = methods.train_stage(self.pipeline, "supervised", config).scores["iou"]
        return _statistics(ious[self.base.num_seen:split.num_seen])["mean"]

    def shots(self, count: int, draw: int) -> list[ShotImage]:
        """K training images holding an added class (the first K of draw d's permutation, so
        draws are nested): seen and added classes labelled, the base model's unseen classes 255
        (they stay zero-shot)."""
        if count > len(self.candidates):
            raise ConfigError(f"--shots {count}: only {len(self.candidates)} training images "
                              f"hold {self.recipe.add_classes}")
        order = np.random.default_rng([self.recipe.seed, draw]).permutation(self.candidates)
        indices = [int(index) for index in order[:count]]
        check_training_only([self.train_set.ids[i] for i in indices], self.loader.dataset.ids)
        lookup = self.split.test_lookup()
        lookup[list(self.base.unseen_ids)] = 255
        return [ShotImage(self.train_set.ids[i], image, lookup[label])
                for i, (image, label) in zip(indices, map(self.train_set.read_raw, indices))]

    def stage(self, method: str, count: int, draw: int):
        """One method at one K and draw (K = 0: CaGNet's zero-shot extension): run (or reuse)
        it and evaluate."""
        shots = self.shots(count, draw)
        # Each method's own settings only: a CaGNet-only change leaves the baselines' stages
        # reusable (they share the extension's replayed pixels, nothing else of it).
        extension = {"cagnet": self.recipe.extension, "cagnet_network": self.recipe.network}
        settings = {"extension": dataclasses.asdict(extension[method])} if method in extension \
            else {"pixel_classifier": dataclasses.asdict(self.recipe.pixels),
                  "replay_images": self.recipe.extension.replay_images}
        signature = {"method": method, "shots": [shot.name for shot in shots], "draw": draw,
                     **settings, "classes": self.split.model_class_names,
                     "data": dataclasses.asdict(self.config.data),
                     "eval": dataclasses.asdict(self.config.eval)}
        run_dir = self.pipeline.work / method / f"k{count}_draw{draw}"

        def action() -> tuple:
            loaded = load_model(self.checkpoint)
            loaded.model.to(self.device)
            details = getattr(self, "_" + method)(loaded, shots, draw)
            card = {"method": f"{METHODS[method]} on {self.checkpoint}",
                    "shots": signature["shots"], **details}
            scores = evaluate_and_report(loaded.model, self.loader, self.config.eval,
                                         self.split, card, self.device, run_dir,
                                         f"{METHODS[method]}, K = {count}, draw {draw}")
            scores["new_iou"] = _statistics([scores["iou"][i] for i in self.added])["mean"]
            return run_dir / "metrics.json", scores, details

        return self.pipeline.stage(f"{method}_k{count}_draw{draw}", run_dir, signature,
                                   {"base": self.checkpoint}, action)

    def replay(self, model: torch.nn.Module):
        """The seen classes' replayed pixels through the base network (computed once: it is
        frozen)."""
        if self._replay is None:
            self._replay = self.replay_through(model)
        return self._replay

    def replay_through(self, model: torch.nn.Module):
        return replay_pool(model, self.train_set, self.recipe.extension.replay_images,
                           self.recipe.seed, self.device)

    def _cagnet(self, loaded: LoadedModel, shots: list, draw: int,
                settings: ExtensionSettings | None = None) -> dict:
        settings = settings or self.recipe.extension
        settings = dataclasses.replace(settings, seed=settings.seed + draw)
        training = build_dataset(self.config.data, self.split, self.config.train.seed, "train") \
            if settings.network_iterations else None
        # a trained network changes the features: the replay is read through it
        replay = self.replay_through if settings.network_iterations else self.replay
        summary = extend_with_shots(loaded, self.recipe.add_classes, self.rows, settings, shots,
                                    replay if shots else None, training)
        return {"real_pixels": summary.get("real_pixels_per_class", {}),
                **({"network": summary["network"]} if "network" in summary else {})}

    def _cagnet_network(self, loaded: LoadedModel, shots: list, draw: int) -> dict:
        return self._cagnet(loaded, shots, draw, self.recipe.network)

    def _pool(self, loaded: LoadedModel, shots: list):
        data, warp = self.config.data, self.config.eval.warp_size
        maps = [frozen_maps(loaded.model, *shot.warped(data.mean_bgr, warp), self.device)[::2]
                for shot in shots]
        add_unseen_classes(loaded.model, self.rows.to(self.device))
        return merge_pools(pool_of(maps), self.replay(loaded.model))

    def _pixel_classifier(self, loaded: LoadedModel, shots: list, draw: int) -> dict:
        train_pixel_classifier(loaded.model, self._pool(loaded, shots), self.recipe.pixels,
                               draw, self.device)
        return {}

    def _synthesised_labels(self, loaded: LoadedModel, shots: list, draw: int) -> dict:
        settings, model = self.recipe.pixels, loaded.model
        pool, segmenter = self._pool(loaded, shots), model.discriminator
        ensemble = [train_pixel_classifier(model, pool, settings, draw * settings.ensemble + m,
                                           self.device) for m in range(settings.ensemble)]
        model.discriminator = segmenter
        names = {shot.name for shot in shots}
        unlabelled = [i for i, name in enumerate(self.train_set.ids) if name not in names]
        order = np.random.default_rng([self.recipe.seed, draw, 1]).permutation(unlabelled)
        kept, diagnostics = synthesise_labels(
            model, ensemble, self.train_set, order[:settings.label_images].tolist(), settings,
            draw, self.split.test_lookup(), self.added, self.device)
        finetune_classifier(model, segmenter, settings.finetune(draw), self.device, pool=kept)
        return {"synthesised_labels": diagnostics}


def run_fewshot(recipe_path: str | Path, output_dir: str | Path, shots: Sequence[int],
                draws: int, overrides: Sequence[str] = (), fresh: bool = False,
                show_progress: bool = True) -> dict:
    """Run (or reuse) every stage for each K in `shots` and each draw; write `fewshot.json`,
    `fewshot.md` and `fewshot.png` into `output_dir`. Returns the json document."""
    started = time.perf_counter()
    recipe = read_fewshot_recipe(recipe_path)
    pipeline = ComparePipeline(recipe.compare, Path(output_dir), overrides, fresh, show_progress)
    pipeline.work = pipeline.output_dir / "fewshot"
    pipeline.prepare_benchmark()
    experiment = FewShotExperiment(recipe, pipeline)
    supervised, results = experiment.supervised_iou(), {method: {} for method in METHODS}
    for count in shots:
        for method in [m for m in METHODS if m != "cagnet_network" or recipe.network] \
                if count else ["cagnet"]:
            found = [experiment.stage(method, count, d) for d in range(draws if count else 1)]
            results[method][str(count)] = {key: _statistics([o.scores.get(key) for o in found])
                                           for key in ("new_iou", "miou_seen", "hiou")}
            results[method][str(count)]["details"] = [o.details for o in found]
    config, base = experiment.config, experiment.base
    document = {
        "title": f"{config.name}: adding {recipe.add_classes} from K labelled images",
        "evaluation": f"{describe_protocol(config.eval.protocol, config.eval.warp_size)}; "
                      f"{base.num_seen} seen, {base.num_unseen} unseen, then the added classes",
        "shots": list(shots), "draws": draws, "methods": results, "references": {
            "zero_shot_cagnet": results["cagnet"].get("0", {}).get("new_iou", {}).get("mean"),
            "supervised": supervised},
        "minutes": (time.perf_counter() - started) / 60, "recipe": str(recipe.path),
        "reused": [name for name, outcome in pipeline.outcomes.items() if outcome.reused]}
    _write(Path(output_dir), document)
    return document


def _write(out_dir: Path, document: dict) -> None:
    """fewshot.json, fewshot.md (table, references, label diagnostics), fewshot.png."""
    atomic_write_json(out_dir / "fewshot.json", document)
    shots, references = document["shots"], document["references"]
    lines = [f"# {document['title']}", "", f"Evaluation: {document['evaluation']}. Mean ± std "
             f"over {document['draws']} draws of shot images (K = 0: one run).", "",
             "| method | K | new-class IoU | seen mIoU | hIoU |", "|---|---|---|---|---|"]
    for method, label in METHODS.items():
        for count, entry in document["methods"][method].items():
            lines.append(f"| {label} | {count} | " + " | ".join(
                "-" if entry[key]["mean"] is None else
                f"{entry[key]['mean']:.4f} ± {entry[key]['std']:.4f}"
                for key in ("new_iou", "miou_seen", "hiou")) + " |")
    zero, supervised = (f"{value:.4f}" if value is not None else "-"
                        for value in (references["zero_shot_cagnet"], references["supervised"]))
    lines += ["", f"References (new-class IoU): zero-shot CaGNet {zero}; fully supervised "
              f"(step 1 with the added classes seen) {supervised}.",
              "", "Synthesised labels kept, and how often right (read from the hidden labels "
              "after labelling, never used for training):", ""]
    lines += [f"- K = {count}, draw {draw}: {json.dumps(details['synthesised_labels'])}"
              for count, entry in document["methods"]["synthesised_labels"].items()
              for draw, details in enumerate(entry["details"])]
    lines += ["", f"Wall time {document['minutes']:.1f} min; reused: {document['reused']}."]
    atomic_write_text(out_dir / "fewshot.md", "\n".join(lines) + "\n")
    series = {label: [document["methods"][method].get(str(k), {}).get("new_iou", {})
                      .get("mean") for k in shots] for method, label in METHODS.items()
              if document["methods"][method]}
    series["zero-shot (reference)"] = [references["zero_shot_cagnet"]] * len(shots)
    series["supervised (reference)"] = [references["supervised"]] * len(shots)
    write_png(out_dir / "fewshot.png", curve_chart(  # curve_chart skips missing (None) points
        shots, series, "new-class IoU against K labelled images", "K (shots)"))
