"""Scores of `cagnet.metrics.zero_shot_scores` as tables, JSON and log lines, in the confusion
matrix's class order; an undefined score (NaN) is "—" in Markdown and `null` in JSON."""

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from cagnet.utils.io import atomic_write_json, atomic_write_text

__all__ = ["class_rows", "format_scores_line", "markdown_report", "metrics_document",
           "write_report"]

MISSING = "—"

# (scores key, column title) of the summary table, in display order.
SUMMARY_COLUMNS = (("hiou", "hIoU"), ("miou", "mIoU"), ("miou_seen", "S-mIoU"),
                   ("miou_unseen", "U-mIoU"), ("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"))


def _format_number(value: Any, decimals: int = 4) -> str:
    """A score with fixed decimals, or "—" when it is missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{decimals}f}"


def class_rows(scores: Mapping[str, Any], class_names: Sequence[str], num_seen: int) -> list[dict]:
    """Per matrix position: `name`, `index`, `split` (seen / unseen), `iou`, `accuracy` (NaN
    where undefined); ValueError when names and scores differ in number or `num_seen` is off."""
    iou = list(scores["iou"])
    accuracy = list(scores["accuracy"])
    if len(class_names) != len(iou) or len(accuracy) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} per-class IoUs and "
                         f"{len(accuracy)} accuracies; they must match the confusion matrix")
    if not 0 <= num_seen <= len(iou):
        raise ValueError(f"num_seen {num_seen} is outside [0, {len(iou)}]")
    return [{"name": str(name), "index": index, "split": "seen" if index < num_seen else "unseen",
             "iou": float(iou[index]) if iou[index] is not None else math.nan,
             "accuracy": float(accuracy[index]) if accuracy[index] is not None else math.nan}
            for index, name in enumerate(class_names)]


def markdown_report(scores: Mapping[str, Any], class_names: Sequence[str], num_seen: int,
                    protocol: Mapping[str, Any], title: str,
                    open_world: Mapping[str, Any] | None = None) -> str:
    """The text of `report.md`: summary (one row per protocol, the primary marked), `protocol`
    as a bullet list, per-class table, and the `--min-confidence` scores (`open_world`) apart."""
    primary = protocol.get("protocol", "") if protocol else ""
    named = {f"{name}{' (primary)' if name == primary else ''}": values
             for name, values in (scores.get("protocols") or {}).items()}
    lines = [f"# {title}", "", "## Summary", "", *_summary_table(named or {"": scores})]
    lines += ["", f"Pixels evaluated: {int(scores.get('num_pixels', 0))}", "", "## Protocol", ""]
    recorded = [f"- {key}: {value}" for key, value in (protocol or {}).items()]
    lines += recorded or ["- (not recorded)"]
    lines += ["", "## Per class", "", "| index | class | split | IoU | accuracy |",
              "|---|---|---|---|---|"]
    for row in class_rows(scores, class_names, num_seen):
        name = row["name"].replace("|", "\\|")
        lines.append(f"| {row['index']} | {name} | {row['split']} | "
                     f"{_format_number(row['iou'])} | {_format_number(row['accuracy'])} |")
    if scores.get("zsl_iou"):
        unseen_names = [str(name) for name in class_names[num_seen:]]
        lines += ["", "## Unseen classes only (ZSL setting)", "",
                  "The pixels of unseen classes, each predicted among the unseen classes only "
                  f"(chance accuracy {1 / len(unseen_names):.2f}): mIoU "
                  f"{_format_number(scores.get('zsl_miou'))}, mean accuracy "
                  f"{_format_number(scores.get('zsl_mean_acc'))}; IoU per class: " + ", ".join(
                      f"{name} {_format_number(value)}"
                      for name, value in zip(unseen_names, scores["zsl_iou"])) + "."]
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
    """The content of `metrics.json`: the scores plus `classes` and `protocol`."""
    return {**scores, "classes": class_rows(scores, class_names, num_seen),
            "protocol": dict(protocol)}


def write_report(out_dir: str | os.PathLike, scores: Mapping[str, Any],
                 class_names: Sequence[str], num_seen: int, protocol: Mapping[str, Any],
                 title: str, open_world: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write `metrics.json` and `report.md` into `out_dir` atomically; returns both paths."""
    out_dir = Path(out_dir)
    document = metrics_document(scores, class_names, num_seen, protocol)
    report = markdown_report(scores, class_names, num_seen, protocol, title, open_world)
    return (atomic_write_json(out_dir / "metrics.json", document),
            atomic_write_text(out_dir / "report.md", report))


def format_scores_line(scores: Mapping[str, Any]) -> str:
    """One line for logs and the CLI: `hIoU 0.4012 | mIoU 0.6545 | seen 0.7840 | unseen 0.2659`."""
    parts = (("hIoU", "hiou"), ("mIoU", "miou"), ("seen", "miou_seen"), ("unseen", "miou_unseen"))
    return " | ".join(f"{label} {_format_number(scores.get(key))}" for label, key in parts)
