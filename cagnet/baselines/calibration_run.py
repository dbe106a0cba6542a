"""`cagnet calibrate`: T picked on the validation classes of a model of the same method trained
without them (`calibration.validation_split`), or given (recorded as "given"); the test curve is
reported, never used to choose. Writes `calibration.json` / `.md` / `.png` and the calibrated
model's `metrics.json`, `report.md` and figures."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from cagnet.baselines.calibration import (CURVE_KEYS, SweepTarget, calibration_curve,
                                          pick_temperature, sweep_confusions)
from cagnet.datasets.build import build_eval_loader
from cagnet.datasets.splits import ClassSplit
from cagnet.engine.checkpoint import LoadedModel, load_model
from cagnet.engine.protocol import protocol_card
from cagnet.errors import CheckpointError, ConfigError
from cagnet.metrics import zero_shot_scores
from cagnet.report.charts import write_evaluation_figures
from cagnet.report.curves import write_curve_png
from cagnet.report.tables import format_scores_line, write_report
from cagnet.utils.io import atomic_write_json, atomic_write_text
from cagnet.utils.runtime import resolve_device

LOGGER = logging.getLogger("cagnet")


@dataclass
class CalibrationResult:
    """What one calibration produced (curves: `calibration_curve` rows)."""

    temperature: float
    chosen_on: str  # "best hIoU on the validation classes ..." or "given ..."
    test_curve: list[dict]
    test_scores: dict  # zero_shot_scores of the real model at `temperature`
    confusion: torch.Tensor  # (K, K) of the real model at `temperature`
    validation_curve: list[dict] = field(default_factory=list)
    validation_classes: list[str] = field(default_factory=list)


def sweep_target(loaded: LoadedModel, device: torch.device) -> SweepTarget:
    """The test split of a loaded checkpoint, as its own evaluation would see it."""
    config, split = loaded.config, loaded.split()
    return SweepTarget(loaded.model.to(device), build_eval_loader(config, split), split.num_seen,
                       split.num_seen + split.num_unseen, config.eval.protocol,
                       config.eval.warp_size, device, config.eval.max_images)


def calibrate(test: SweepTarget, values: Sequence[float], *,
              validation: SweepTarget | None = None, temperature: float | None = None,
              validation_classes: Sequence[str] = ()) -> CalibrationResult:
    """Pick T on `validation` (best hIoU over `values`) or take the given `temperature`, then
    measure the test curve and the test scores at T."""
    if (validation is None) == (temperature is None):
        raise ConfigError("calibration: give either a validation model (T is picked on its "
                          "validation classes) or a fixed T, not both / neither")
    values = sorted(set(float(value) for value in values))
    validation_curve: list[dict] = []
    if validation is not None:
        validation_curve = calibration_curve(sweep_confusions(validation, values), values,
                                             validation.num_seen)
        temperature = pick_temperature(validation_curve)
        chosen_on = ("best hIoU on the validation classes " + ", ".join(validation_classes)
                     + " (held out of training, playing the unseen classes)")
    else:
        values = sorted(set(values) | {float(temperature)})
        chosen_on = "given (not chosen here)"
    confusions = sweep_confusions(test, values)
    index = values.index(float(temperature))
    scores = zero_shot_scores(confusions[index], list(range(test.num_seen)),
                              list(range(test.num_seen, test.num_classes)))
    return CalibrationResult(float(temperature), chosen_on,
                             calibration_curve(confusions, values, test.num_seen), scores,
                             confusions[index], validation_curve, list(validation_classes))


def check_validation_model(test_split: ClassSplit, validation_split: ClassSplit,
                           path: str | Path) -> list:
    """The validation model's held-out classes must be seen classes of the real model and
    none of its unseen classes: T is never chosen on the test set's unseen classes."""
    held_out = [validation_split.class_names[i] for i in validation_split.unseen_ids]
    real_seen = {test_split.class_names[i] for i in test_split.seen_ids}
    real_unseen = {test_split.class_names[i] for i in test_split.unseen_ids}
    wrong = sorted(set(held_out) - real_seen) + sorted(
        set(validation_split.model_class_names) & real_unseen)
    if wrong:
        raise CheckpointError(
            f"{path}: a validation model must be trained on seen classes only and hold out "
            f"some of them ({held_out}); these classes are not seen classes of the model to "
            f"calibrate: {sorted(set(wrong))}")
    return held_out


def calibrate_checkpoints(checkpoint: str | Path, values: Sequence[float], *,
                          validation_checkpoint: str | Path | None = None,
                          temperature: float | None = None, config_path: str | None = None,
                          overrides: Sequence[str] = (), out_dir: str | Path | None = None
                          ) -> tuple[CalibrationResult, Path]:
    """Calibrate `checkpoint` (see the module docstring); returns the result and `out_dir`."""
    loaded = load_model(checkpoint, config_path, overrides)
    device = resolve_device(loaded.config.train.device)
    validation, held_out = None, []
    if validation_checkpoint is not None:
        validation_model = load_model(validation_checkpoint, None, overrides)
        held_out = check_validation_model(loaded.split(), validation_model.split(),
                                          validation_checkpoint)
        validation = sweep_target(validation_model, device)
    result = calibrate(sweep_target(loaded, device), values, validation=validation,
                       temperature=temperature, validation_classes=held_out)
    target = Path(out_dir) if out_dir else \
        Path(checkpoint).parent.parent / f"calibration_{Path(checkpoint).stem}"
    write_calibration(target, result, loaded, str(checkpoint), validation_checkpoint)
    return result, target


def write_calibration(out_dir: Path, result: CalibrationResult, loaded: LoadedModel,
                      checkpoint: str, validation_checkpoint: str | Path | None) -> None:
    """calibration.json / .md / .png plus the calibrated model's metrics.json and report."""
    split, scores = loaded.split(), result.test_scores
    card = protocol_card(loaded.config, split, loaded.model.class_embeddings.shape[1])
    card["calibration"] = (f"T = {result.temperature:g} subtracted from every seen class's "
                           f"softmax probability before the argmax; T {result.chosen_on}")
    title = f"{loaded.config.name}: {checkpoint} calibrated with T = {result.temperature:g}"
    write_report(out_dir, scores, split.model_class_names, split.num_seen, card, title)
    write_evaluation_figures(out_dir, result.confusion.numpy(), scores, split.model_class_names,
                             split.num_seen)
    atomic_write_json(out_dir / "calibration.json", {
        "checkpoint": checkpoint, "method": loaded.config.baseline.method,
        "validation_checkpoint": str(validation_checkpoint) if validation_checkpoint else None,
        "validation_classes": result.validation_classes, "temperature": result.temperature,
        "chosen_on": result.chosen_on, "validation_curve": result.validation_curve,
        "test_curve": result.test_curve, "test_scores": {
            key: value for key, value in scores.items() if not isinstance(value, list)}})
    atomic_write_text(out_dir / "calibration.md", calibration_markdown(result))
    x_values = [row["temperature"] for row in result.test_curve]
    series = {f"test {name}": [row[key] for row in result.test_curve] for key, name in
              (("hiou", "hIoU"), ("miou_seen", "seen mIoU"), ("miou_unseen", "unseen mIoU"))}
    if result.validation_curve:
        lookup = {row["temperature"]: row["hiou"] for row in result.validation_curve}
        series["validation hIoU"] = [lookup.get(x, float("nan")) for x in x_values]
    write_curve_png(out_dir / "calibration.png", x_values, series,
                    "calibration: scores against T", marked_x=result.temperature,
                    dashed=("test seen mIoU", "test unseen mIoU"))
    LOGGER.info("calibrated with T = %g (%s): %s", result.temperature, result.chosen_on,
                format_scores_line(scores))


def calibration_markdown(result: CalibrationResult) -> str:
    """Both curves as Markdown tables, T and how it was chosen."""
    lines = ["# Calibration", "", f"T = {result.temperature:g}: {result.chosen_on}.", ""]
    for heading, curve in (("Validation curve (used to choose T)", result.validation_curve),
                           ("Test curve (reported only, never used to choose T)",
                            result.test_curve)):
        if curve:
            lines += [f"## {heading}", "", "| T | hIoU | mIoU | seen mIoU | unseen mIoU |",
                      "|---|---|---|---|---|"]
            lines += [f"| {row['temperature']:g} | " + " | ".join(
                f"{row[key]:.4f}" if row[key] == row[key] else "—" for key in CURVE_KEYS)
                + " |" for row in curve] + [""]
    return "\n".join(lines)
