"""`cagnet compare`: `ComparePipeline` holds the recipe, the stage configs and the stages, each
cached in its run folder by `stage.json` (signature: the resolved config and the path, size and
SHA-256 of every input file, with paths inside the output folder written relative to it, so a
moved or copied folder keeps its stages; an unchanged signature whose checkpoint exists is
reused; code changes are not seen: use `--fresh`). `methods.py` runs each method's stages,
`run.py` orders them and writes the table."""

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cagnet.baselines.compare.recipe import CompareRecipe
from cagnet.class_embeddings import sha256_file
from cagnet.config import Config, config_to_dict, load_config
from cagnet.datasets.shapes import prepare_shapes
from cagnet.engine.pretrain import pretrained_init
from cagnet.report.tables import write_report
from cagnet.utils.io import OUTPUT_DIR_MARK, atomic_write_json, relocatable

LOGGER = logging.getLogger("cagnet")
SCORE_KEYS = ("hiou", "miou", "miou_seen", "miou_unseen", "pixel_acc", "mean_acc", "zsl_miou",
              "num_pixels")


@dataclass
class StageOutcome:
    """What a finished stage left behind."""

    name: str
    run_dir: Path
    checkpoint: Path
    scores: dict
    seconds: float
    reused: bool
    details: dict = field(default_factory=dict)


class ComparePipeline:
    """The stage configs and outcomes of one comparison (see the module docstring)."""

    def __init__(self, recipe: CompareRecipe, output_dir: Path, overrides: Sequence[str] = (),
                 fresh: bool = False, show_progress: bool = True) -> None:
        self.recipe, self.output_dir = recipe, Path(output_dir).resolve()  # absolute: relocatable
        self.work = self.output_dir / "compare"
        self.cli_overrides, self.fresh, self.show_progress = list(overrides), fresh, show_progress
        self.paths: list[str] = []
        self.outcomes: dict[str, StageOutcome] = {}
        self.root = str(self.output_dir)
        self._digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> SHA-256

    def fingerprint(self, path: str | Path) -> dict:
        """Identity of an input file: its path (`<output-dir>/...` inside the output folder),
        size and SHA-256 (computed once per path, size and modification time)."""
        resolved = Path(path).resolve()
        status = resolved.stat()
        key = (str(resolved), status.st_size, status.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = sha256_file(resolved)
        return {"path": relocatable(str(resolved), self.root), "size": status.st_size,
                "sha256": self._digests[key]}

    def config(self, stage: str, *fixed: str) -> Config:
        """The stage's recipe with the benchmark paths, the recipe's and the stage's overrides,
        the command line's, and last the stage's fixed settings."""
        stage_recipe = self.recipe.stages[stage]
        return load_config(stage_recipe.recipe, self.paths + self.recipe.overrides
                           + stage_recipe.overrides + self.cli_overrides + list(fixed))

    def stage(self, name: str, run_dir: Path, config: Config | dict, inputs: dict[str, Path],
              action: Callable[[], tuple[Path, dict, dict]]) -> StageOutcome:
        """Run `action` (-> checkpoint, scores, details) unless `run_dir/stage.json` holds the
        same signature (`config`, `inputs`) and its checkpoint exists; record the outcome."""
        signature = {"config": config_to_dict(config) if isinstance(config, Config) else config,
                     "inputs": {key: self.fingerprint(path) for key, path in inputs.items()}}
        # tuples -> lists, keys -> str: as read back; the output folder's own paths relative
        signature = relocatable(json.loads(json.dumps(signature)), self.root)
        record_path, record = run_dir / "stage.json", {}
        if not self.fresh and record_path.is_file():
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = {}
        checkpoint = Path(record.get("checkpoint", "").replace(OUTPUT_DIR_MARK, self.root))
        if record.get("signature") == signature and checkpoint.is_file():
            LOGGER.info("compare: reusing stage %s from %s", name, run_dir)
            outcome = StageOutcome(name, run_dir, checkpoint, record["scores"],
                                   float(record.get("seconds", 0.0)), True,
                                   record.get("details", {}))
        else:
            LOGGER.info("compare: running stage %s into %s", name, run_dir)
            # The old record goes first: a run stopped half-way (its clean stop writes a
            # checkpoint where the old one was) must not be taken for the finished old stage.
            record_path.unlink(missing_ok=True)
            started = time.perf_counter()
            checkpoint, scores, details = action()
            seconds = time.perf_counter() - started
            scores = {key: value for key, value in scores.items() if not isinstance(value, dict)}
            stored = relocatable(str(Path(checkpoint).resolve()), self.root)
            atomic_write_json(record_path, {"stage": name, "signature": signature,
                                            "checkpoint": stored, "scores": scores,
                                            "seconds": seconds, "details": details})
            outcome = StageOutcome(name, run_dir, Path(checkpoint), scores, seconds, False, details)
        self.outcomes[name] = outcome
        return outcome

    def prepare_benchmark(self) -> None:
        """Shapes: generate / reuse the benchmark and the pretrained init as `cagnet demo` does,
        in `<output-dir>/shapes` and `<output-dir>/pretrain`."""
        if not self.recipe.shapes_benchmark:
            return
        data_dir = self.output_dir / "shapes"
        embeddings = prepare_shapes(data_dir, self.recipe.benchmark_seed)
        self.paths = [f"data.root={data_dir}", f"embeddings.path={embeddings}",
                      f"pretrain.corpus={data_dir / 'pretrain'}"]
        init = pretrained_init(self.config("cagnet_step1"), self.output_dir / "pretrain",
                               self.show_progress)
        self.paths.append(f"model.init={init}")


def entry(outcome: StageOutcome, description: str, **protocol) -> dict:
    """One method's compare.json entry from the stage that produced its model."""
    return {"scores": {key: outcome.scores.get(key) for key in SCORE_KEYS},
            "iou": list(outcome.scores.get("iou", [])),
            "protocol": {"method": description, **protocol}, "run": str(outcome.run_dir),
            "checkpoint": str(outcome.checkpoint)}


def clean_folder(path: Path) -> Path:
    """An empty folder at `path` (a stage that writes many files starts from scratch)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def restate_protocol(run_dir: Path, updates: dict[str, str], title: str) -> None:
    """Rewrite a run's `metrics.json` / `report.md` / `protocol.json` with protocol entries
    replaced or added (a self-training run's pseudo-labelled unseen pixels do reach the losses,
    unlike the trainer's default card says). Scores are unchanged."""
    document = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    protocol = {**document.pop("protocol", {}), **updates}
    classes = document.pop("classes", [])
    num_seen = sum(1 for row in classes if row["split"] == "seen")
    scores = {key: (float("nan") if value is None else value) for key, value in document.items()}
    for key in ("iou", "accuracy"):
        scores[key] = [float("nan") if value is None else value for value in document[key]]
    write_report(run_dir, scores, [row["name"] for row in classes], num_seen, protocol, title)
    card_path = run_dir / "protocol.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        atomic_write_json(card_path, {**card, **updates})
