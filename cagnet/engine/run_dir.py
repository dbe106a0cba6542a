"""The run directory: checks before training, resume bookkeeping, skipped-sample report."""

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import torch

from cagnet.errors import CagnetError, DataError
from cagnet.utils.io import atomic_write_json, atomic_write_text
from cagnet.utils.runtime import RunLog

LOGGER = logging.getLogger("cagnet")
SPACE_MARGIN_BYTES = 16 * 2 ** 20  # logs, TensorBoard events, reports
SKIPPED_FILE = "skipped_samples.txt"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run; check that the folder is writable."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("*.pt")) and not (resume or overwrite):
        raise CagnetError(f"run directory {run_dir} already holds checkpoints: pass --resume to "
                          "continue it or --overwrite to start again")
    try:
        checkpoints.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise CagnetError(f"run directory {run_dir} is not writable: {error}") from None
    for temporary in checkpoints.glob(".*.tmp"):  # left by a process killed mid-write
        temporary.unlink(missing_ok=True)
    if overwrite and not resume:
        for stale in ("log.jsonl", "metrics.json", "report.md", SKIPPED_FILE):
            (run_dir / stale).unlink(missing_ok=True)
        for stale in checkpoints.glob("*.pt"):
            stale.unlink()


def check_listed_files(dataset, key: str, list_path: str, skip: bool) -> None:
    """Every file a list names must exist (with `skip`, missing ones are only reported)."""
    missing = dataset.missing_files()
    if not missing:
        return
    shown = ", ".join(str(path) for path in missing[:5])
    text = (f"{key} ({list_path}): {len(missing)} listed files are missing, e.g. {shown}")
    if not skip or len(missing) >= 2 * len(dataset):
        raise DataError(text + ("" if skip else "; fix the list or the files (or set "
                                "data.on_bad_sample=skip for training data)"))
    LOGGER.warning("%s; they will be skipped (data.on_bad_sample: skip)", text)


def warn_config_changes(stored: dict, current: dict, path: Path, prefix: str = "") -> None:
    """Resuming with other settings breaks the exact continuation: say which ones changed."""
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            warn_config_changes(old, new, path, f"{prefix}{key}.")
        elif old != new:
            LOGGER.warning("resuming %s with %s%s = %r (the checkpoint used %r)", path, prefix,
                           key, new, old)


def estimate_checkpoint_bytes(model: torch.nn.Module,
                              optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """An upper estimate of one checkpoint's size (model, optimiser state, metadata)."""
    total = sum(value.numel() * value.element_size() for value in model.state_dict().values())
    for optimizer in optimizers.values():
        copies = 2 if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1
        for group in optimizer.param_groups:
            total += copies * sum(p.numel() * p.element_size() for p in group["params"])
    return total + 2 ** 20


def check_free_space(run_dir: Path, checkpoint_bytes: int, keeps_best: bool) -> None:
    """Raise unless `run_dir` has room for the checkpoints this run will add."""
    folder = run_dir / "checkpoints"
    names = ("last.pt", "previous.pt") + (("best.pt",) if keeps_best else ())
    new_files = [name for name in names if not (folder / name).is_file()]
    needed = checkpoint_bytes * (len(new_files) + 1) + SPACE_MARGIN_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CagnetError(
            f"not enough free space in {folder}: {_size(free)} free, about {_size(needed)} needed "
            f"(checkpoints of about {_size(checkpoint_bytes)} each: "
            f"{', '.join(new_files) or 'none new'} and one temporary copy); free some space or "
            "choose another --output-dir")


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def truncate_log(path: Path, size: int | None, iteration: int) -> None:
    """Cut `log.jsonl` back to `size` (or, without it, to `iteration`) on resume."""
    if not path.is_file():
        return
    if size is not None:
        current = path.stat().st_size
        if current > size:
            with open(path, "r+b") as stream:
                stream.truncate(size)
            LOGGER.info("%s: dropped %d bytes written after the checkpoint", path, current - size)
        elif current < size:
            LOGGER.warning("%s is shorter than when the checkpoint was written; kept as is", path)
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if _record_iteration(line) <= iteration]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _record_iteration(line: str) -> float:
    try:
        return float(json.loads(line).get("iteration", float("inf")))
    except (ValueError, AttributeError):
        return float("inf")  # a half-written line


def log_size(run_dir: Path) -> int:
    path = run_dir / "log.jsonl"
    return path.stat().st_size if path.is_file() else 0


def open_run_log(run_dir: Path, purge_step: int | None) -> RunLog:
    """The run's log; on resume TensorBoard discards its events from `purge_step` on."""
    log = RunLog(run_dir, tensorboard=purge_step is None)
    if purge_step is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            log.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        except ImportError:
            LOGGER.warning("tensorboard is not installed: scalars go to log.jsonl only")
    return log


def report_skipped_samples(run_dir: Path, skipped: list[str]) -> None:
    """Write `skipped_samples.txt`; add the counts to `metrics.json` and `report.md`."""
    counts = Counter(skipped)
    atomic_write_text(run_dir / SKIPPED_FILE,
                      "# id\ttimes skipped (unreadable or invalid, data.on_bad_sample: skip)\n"
                      + "".join(f"{name}\t{count}\n" for name, count in sorted(counts.items())))
    summary = {"unique": len(counts), "events": len(skipped), "ids": sorted(counts),
               "file": SKIPPED_FILE}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        atomic_write_json(metrics_path, {**metrics, "skipped_samples": summary})
    report_path = run_dir / "report.md"
    if report_path.is_file():
        text = report_path.read_text(encoding="utf-8").rstrip("\n")
        atomic_write_text(report_path, text + f"\n\nSkipped training samples: {len(counts)} "
                          f"ids, {len(skipped)} draws (data.on_bad_sample: skip; see "
                          f"{SKIPPED_FILE}).\n")
    if counts:
        LOGGER.warning("%d unreadable training samples were skipped (%d draws); listed in %s",
                       len(counts), len(skipped), run_dir / SKIPPED_FILE)
