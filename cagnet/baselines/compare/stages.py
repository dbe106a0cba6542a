"""Stages of `cagnet compare`, each cached in its run folder.

A stage writes `stage.json` when it finishes: its signature (the resolved config of the stage
and a fingerprint - path, size, modification time - of every file it starts from), the
checkpoint it produced, its scores and its duration. Running the comparison again with the
same output folder reuses every stage whose signature is unchanged and whose checkpoint is
still there; a changed recipe or a retrained upstream checkpoint re-runs that stage and all
stages after it (their fingerprints change). The cache does not see changes to the code
itself: after updating cagnet, run with `--fresh`, which ignores every cached stage.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cagnet.report.tables import write_report
from cagnet.utils.io import atomic_write_json

LOGGER = logging.getLogger("cagnet")
RECORD = "stage.json"


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


def fingerprint(path: str | Path) -> dict:
    """Identity of an input file: path, size and modification time (ns)."""
    path = Path(path)
    status = path.stat()
    return {"path": str(path.resolve()), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, keys -> str: as read back


def run_stage(name: str, run_dir: Path, signature: dict, inputs: dict[str, Path],
              action: Callable[[], tuple[Path, dict, dict]], fresh: bool) -> StageOutcome:
    """Run `action` (-> checkpoint, scores, details) unless `run_dir/stage.json` holds the same
    signature and inputs and its checkpoint exists; record the outcome."""
    signature = _normalise({**signature,
                            "inputs": {key: fingerprint(path) for key, path in inputs.items()}})
    record_path = run_dir / RECORD
    if not fresh and record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        checkpoint = Path(record.get("checkpoint", ""))
        if record.get("signature") == signature and checkpoint.is_file():
            LOGGER.info("compare: reusing stage %s from %s", name, run_dir)
            return StageOutcome(name, run_dir, checkpoint, record["scores"],
                                float(record.get("seconds", 0.0)), True,
                                record.get("details", {}))
    LOGGER.info("compare: running stage %s into %s", name, run_dir)
    started = time.perf_counter()
    checkpoint, scores, details = action()
    seconds = time.perf_counter() - started
    scalar_scores = {key: value for key, value in scores.items()
                     if not isinstance(value, dict)}
    atomic_write_json(record_path, {"stage": name, "signature": signature,
                                    "checkpoint": str(checkpoint), "scores": scalar_scores,
                                    "seconds": seconds, "details": details})
    return StageOutcome(name, run_dir, Path(checkpoint), scalar_scores, seconds, False, details)


def restate_protocol(run_dir: Path, updates: dict[str, str], title: str) -> None:
    """Rewrite a run's `metrics.json` / `report.md` / `protocol.json` with protocol entries
    replaced or added (a self-training run is not the default protocol the trainer's card
    describes: its pseudo-labelled unseen pixels do reach the losses). Scores are unchanged."""
    metrics_path = run_dir / "metrics.json"
    document = json.loads(metrics_path.read_text(encoding="utf-8"))
    protocol = {**document.pop("protocol", {}), **updates}
    classes = document.pop("classes", [])
    names = [row["name"] for row in classes]
    num_seen = sum(1 for row in classes if row["split"] == "seen")
    scores = {key: (float("nan") if value is None else value) for key, value in document.items()}
    for key in ("iou", "accuracy"):
        scores[key] = [float("nan") if value is None else value for value in document[key]]
    write_report(run_dir, scores, names, num_seen, protocol, title)
    card_path = run_dir / "protocol.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        atomic_write_json(card_path, {**card, **updates})
