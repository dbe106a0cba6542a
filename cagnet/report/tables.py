"""Turn the scores of `cagnet.metrics.zero_shot_scores` into tables, JSON and log lines.

Formatting only: no metric is computed here. Class rows follow the model's class order (seen
classes first, then unseen), which is the order of the confusion matrix, so `class_names[i]` names
matrix position i and positions `< num_seen` are seen. An undefined score (NaN: the class never
occurs, or a set has no valid class) is written as "—" in Markdown and as `null` in JSON.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from cagnet.utils.io import atomic_write_json, atomic_write_text

__all__ = ["class_rows", "format_scores_line", "markdown_report", "metrics_document",
           "write_report"]

MISSING = "—"

# (scores key, column title) of the summary table, in display order.
SUMMARY_COLUMNS = (
    ("hiou", "hIoU"),
    ("miou", "mIoU"),
    ("miou_seen", "S-mIoU"),
    ("miou_unseen", "U-mIoU"),
    ("pixel_acc", "pixel acc"),
    ("mean_acc", "mean acc"),
)


def _format_number(value: Any, decimals: int = 4) -> str:
    """A score with fixed decimals, or "—" when it is missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{decimals}f}"


def class_rows(scores: Mapping[str, Any], class_names: Sequence[str],
               num_seen: int) -> list[dict]:
    """One row per class of the confusion matrix.

    Args:
        scores: Output of `zero_shot_scores` (needs `iou` and `accuracy`, N entries each).
        class_names: N names in model order (seen first, then unseen).
        num_seen: S; positions `< S` are seen, the rest unseen.

    Returns:
        N dicts with `name`, `index` (matrix position), `split` ("seen"/"unseen"), `iou`,
        `accuracy` (floats, NaN where undefined).

    Raises:
        ValueError: the number of names differs from the number of per-class scores, or
            `num_seen` is outside `[0, N]`.
    """
    iou = list(scores["iou"])
    accuracy = list(scores["accuracy"])
    if len(class_names) != len(iou) or len(accuracy) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} per-class IoUs and "
                         f"{len(accuracy)} accuracies; they must match the confusion matrix")
    if not 0 <= num_seen <= len(iou):
        raise ValueError(f"num_seen {num_seen} is outside [0, {len(iou)}]")
    return [
        {
            "name": str(name),
            "index": index,
            "split": "seen" if index < num_seen else "unseen",
            "iou": float(iou[index]) if iou[index] is not None else math.nan,
            "accuracy": float(accuracy[index]) if accuracy[index] is not None else math.nan,
        }
        for index, name in enumerate(class_names)
    ]


def markdown_report(scores: Mapping[str, Any], class_names: Sequence[str], num_seen: int,
                    protocol: Mapping[str, Any], title: str,
                    open_world: Mapping[str, Any] | None = None) -> str:
    """A Markdown report: summary table (one row per protocol of `scores["protocols"]` when
    present, the primary one marked), evaluation protocol, per-class table, and the
    `open_world` scores of `--min-confidence` in a block of their own.

    Args:
        scores: Output of `zero_shot_scores`.
        class_names: N names in model order (seen first, then unseen).
        num_seen: S, the number of seen classes.
        protocol: What produced the numbers (dataset, split, label resolution, checkpoint...),
            written as a bullet list `key: value` in the given order.
        title: The level-1 heading.

    Returns:
        The report text, ending with a newline.
    """
    rows = class_rows(scores, class_names, num_seen)
    primary = protocol.get("protocol", "") if protocol else ""
    named = {f"{name}{' (primary)' if name == primary else ''}": values
             for name, values in (scores.get("protocols") or {}).items()}
    lines = [f"# {title}", "", "## Summary", "", *_summary_table(named or {"": scores})]
    lines += ["", f"Pixels evaluated: {int(scores.get('num_pixels', 0))}", "", "## Protocol", ""]
    if protocol:
        lines += [f"- {key}: {value}" for key, value in protocol.items()]
    else:
        lines.append("- (not recorded)")
    lines += ["", "## Per class", "", "| index | class | split | IoU | accuracy |",
              "|---|---|---|---|---|"]
    for row in rows:
        name = row["name"].replace("|", "\\|")
        lines.append(f"| {row['index']} | {name} | {row['split']} | "
                     f"{_format_number(row['iou'])} | {_format_number(row['accuracy'])} |")
    if open_world:
        lines += ["", "## Open-world threshold (not a benchmark score)", "",
                  f"Pixels whose max softmax probability is below {open_world['min_confidence']}"
                  f" get no class and count as misses (protocol {open_world['protocol']}); "
                  f"{_format_number(open_world['coverage'])} of the pixels keep a class.", "",
                  *_summary_table({f"min confidence {open_world['min_confidence']}": open_world})]
    return "\n".join(lines) + "\n"


def _summary_table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The summary columns, one row per named scores dict (no name column for one unnamed)."""
    named = list(rows) != [""]
    header = (["protocol"] if named else []) + [title for _, title in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, values in rows.items():
        cells = [_format_number(values.get(key)) for key, _ in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(([name] if named else []) + cells) + " |")
    return lines


def metrics_document(scores: Mapping[str, Any], class_names: Sequence[str], num_seen: int,
                     protocol: Mapping[str, Any]) -> dict:
    """The content of `metrics.json`: every score key, plus `classes` and `protocol`.

    Args:
        scores: Output of `zero_shot_scores`.
        class_names: N names in model order (seen first, then unseen).
        num_seen: S, the number of seen classes.
        protocol: What produced the numbers.

    Returns:
        A JSON-ready dict (NaN values stay float NaN; `atomic_write_json` writes them as null).
    """
    document = dict(scores)
    document["classes"] = class_rows(scores, class_names, num_seen)
    document["protocol"] = dict(protocol)
    return document


def write_report(out_dir: str | os.PathLike, scores: Mapping[str, Any],
                 class_names: Sequence[str], num_seen: int, protocol: Mapping[str, Any],
                 title: str, open_world: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write `metrics.json` and `report.md` into `out_dir` (created if needed), atomically;
    `open_world` only goes into the report (see `markdown_report`).

    Returns:
        `(metrics_path, report_path)`.
    """
    out_dir = Path(out_dir)
    document = metrics_document(scores, class_names, num_seen, protocol)
    report = markdown_report(scores, class_names, num_seen, protocol, title, open_world)
    metrics_path = atomic_write_json(out_dir / "metrics.json", document)
    report_path = atomic_write_text(out_dir / "report.md", report)
    return metrics_path, report_path


def format_scores_line(scores: Mapping[str, Any]) -> str:
    """One line for logs and the CLI, e.g. `hIoU 0.4012 | mIoU 0.6545 | seen 0.7840 | unseen
    0.2659` ("—" for NaN)."""
    parts = (("hIoU", "hiou"), ("mIoU", "miou"), ("seen", "miou_seen"),
             ("unseen", "miou_unseen"))
    return " | ".join(f"{label} {_format_number(scores.get(key))}" for label, key in parts)
