"""The paper-style comparison of `cagnet compare`, `compare.md` and `compare.json`: one entry per
method (scores, protocol, run folder) in the order of the paper's tables, then the published
pattern (SPNet's unseen mIoU collapses, calibration and generation recover it, CaGNet beats
ZS3Net, self-training adds on top), each statement marked as holding or not on this run."""

import math
from pathlib import Path
from typing import Any, Callable, Mapping

from cagnet.report.tables import SUMMARY_COLUMNS, _format_number
from cagnet.utils.io import atomic_write_json, atomic_write_text

# The report's columns plus the unseen-only mIoU (ZSL setting: unseen pixels, unseen classes).
TABLE_COLUMNS = (*SUMMARY_COLUMNS, ("zsl_miou", "ZSL U-mIoU"))

METHOD_ROWS: tuple[tuple[str, str], ...] = (
    ("spnet", "SPNet"), ("spnet_c", "SPNet-c"), ("zs3net", "ZS3Net"), ("cagnet", "CaGNet"),
    ("zs3net_st", "ZS3Net + ST"), ("cagnet_st", "CaGNet + ST"),
    ("supervised", "Supervised (every class seen)"))
Entries = Mapping[str, Mapping[str, Any]]


def _score(entries: Entries, method: str, key: str) -> float:
    value = entries.get(method, {}).get("scores", {}).get(key)
    return math.nan if value is None else float(value)


def _greater(first: str, second: str, key: str) -> Callable[[Entries], bool]:
    return lambda entries: _score(entries, first, key) > _score(entries, second, key)


def _spnet_lowest_unseen(entries: Entries) -> bool:
    others = [_score(entries, method, "miou_unseen") for method, _ in METHOD_ROWS
              if method not in ("spnet", "supervised") and method in entries]
    return all(_score(entries, "spnet", "miou_unseen") <= value for value in others)


# (statement of the published pattern, test on this run's entries)
PUBLISHED_PATTERN: tuple[tuple[str, Callable[[Entries], bool]], ...] = (
    ("SPNet's unseen mIoU collapses: the lowest U-mIoU of all methods", _spnet_lowest_unseen),
    ("calibration recovers unseen classes: SPNet-c U-mIoU > SPNet U-mIoU",
     _greater("spnet_c", "spnet", "miou_unseen")),
    ("generation recovers unseen classes: ZS3Net U-mIoU > SPNet U-mIoU",
     _greater("zs3net", "spnet", "miou_unseen")),
    ("generation recovers unseen classes: CaGNet U-mIoU > SPNet U-mIoU",
     _greater("cagnet", "spnet", "miou_unseen")),
    ("generation beats calibration: ZS3Net hIoU > SPNet-c hIoU",
     _greater("zs3net", "spnet_c", "hiou")),
    ("context-aware beats context-free generation: CaGNet hIoU > ZS3Net hIoU",
     _greater("cagnet", "zs3net", "hiou")),
    ("self-training adds on top: CaGNet + ST hIoU > CaGNet hIoU",
     _greater("cagnet_st", "cagnet", "hiou")),
    ("self-training adds on top: ZS3Net + ST hIoU > ZS3Net hIoU",
     _greater("zs3net_st", "zs3net", "hiou")),
    ("CaGNet + ST beats ZS3Net + ST (hIoU)", _greater("cagnet_st", "zs3net_st", "hiou")),
)


def pattern_checks(entries: Entries) -> list[dict]:
    """Each statement of `PUBLISHED_PATTERN` with `holds` (False when a score is missing)."""
    return [{"statement": statement, "holds": bool(test(entries))}
            for statement, test in PUBLISHED_PATTERN]


def comparison_markdown(entries: Entries, title: str, evaluation: str,
                        notes: list[str] = ()) -> str:
    """The table (one row per method present), the pattern checks and the notes."""
    present = [(method, label, entries[method]) for method, label in METHOD_ROWS
               if method in entries]
    lines = [f"# {title}", "", f"Evaluation: {evaluation}.", "",
             "| method | " + " | ".join(header for _, header in TABLE_COLUMNS) + " |",
             "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(_format_number(entry["scores"].get(key))
                                            for key, _ in TABLE_COLUMNS) + " |"
              for _, label, entry in present]
    lines += ["", "## The published pattern on this run", ""]
    lines += [f"- [{'x' if check['holds'] else ' '}] {check['statement']}"
              for check in pattern_checks(entries)]
    lines += ["", "## Methods", ""]
    lines += [f"- **{label}** (`{method}`, run `{entry['run']}`): {entry['protocol']['method']}"
              for method, label, entry in present]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: str | Path, entries: Entries, title: str, evaluation: str,
                     notes: list[str] = (), extra: Mapping[str, Any] | None = None
                     ) -> tuple[Path, Path]:
    """Write `compare.json` (one entry per method in table order, then `comparison`: title,
    evaluation, the pattern checks, notes and `extra`) and `compare.md` into `out_dir`."""
    out_dir = Path(out_dir)
    document: dict[str, Any] = {method: entries[method] for method, _ in METHOD_ROWS
                                if method in entries}
    document["comparison"] = {"title": title, "evaluation": evaluation,
                              "published_pattern": pattern_checks(entries),
                              "notes": list(notes), **dict(extra or {})}
    json_path = atomic_write_json(out_dir / "compare.json", document)
    markdown_path = atomic_write_text(out_dir / "compare.md",
                                      comparison_markdown(entries, title, evaluation, notes))
    return markdown_path, json_path
