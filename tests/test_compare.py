"""`cagnet compare` end to end on the tiny benchmark with tiny iteration counts, its stage cache,
the compare recipe's checks, and the shipped compare recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cagnet.baselines.compare.pipeline import ComparePipeline
from cagnet.baselines.compare.recipe import STAGES, read_compare_recipe
from cagnet.baselines.compare.report import METHOD_ROWS, pattern_checks
from cagnet.cli import main
from cagnet.config import load_config
from cagnet.errors import ConfigError
from conftest import REPOSITORY, tiny_config_overrides

METHODS = ["spnet", "spnet_c", "zs3net", "cagnet", "zs3net_st", "cagnet_st"]


def _tiny_recipe(root: Path, path: Path) -> Path:
    (root / "split.yaml").write_text("seen: [red circle, blue circle, red square]\n"
                                     "unseen: [blue square]\nvalidation: [blue circle]\n")
    tiny_zs3net = ["baseline.zs3net.generator_iterations=2",
                   "baseline.zs3net.classifier_iterations=2", "baseline.zs3net.hidden=16"]
    path.write_text(yaml.safe_dump({
        "step1": str(REPOSITORY / "experiments" / "voc12.yaml"),
        "finetune": str(REPOSITORY / "experiments" / "voc12_finetune.yaml"),
        "calibration_values": "0:1:0.5",
        "overrides": tiny_config_overrides(root) + ["train.mixed_period=1",
                                                    "self_training.top_p=4"],
        "stages": {"zs3net": tiny_zs3net, "zs3net_st": tiny_zs3net,
                   "spnet": {"overrides": ["train.iterations=3"]}}}))
    return path


def test_compare_end_to_end(tiny_voc: Path, tmp_path: Path, monkeypatch) -> None:
    recipe = _tiny_recipe(tiny_voc, tmp_path / "compare.yaml")
    out = tmp_path / "out"
    assert main(["compare", "--config", str(recipe), "--output-dir", str(out)]) == 0
    document = json.loads((out / "compare.json").read_text())
    assert [key for key in document if key != "comparison"] == METHODS
    for method in METHODS:
        entry = document[method]
        assert set(entry["scores"]) >= {"hiou", "miou", "miou_seen", "miou_unseen",
                                        "pixel_acc", "mean_acc", "class_iou"}
        assert Path(entry["run"]).is_dir() and entry["protocol"]["method"]
    assert document["spnet_c"]["protocol"]["temperature"] in (0.0, 0.5, 1.0)
    assert "top 4 predictions" in document["cagnet_st"]["protocol"]["method"]
    assert len(document["comparison"]["published_pattern"]) == 9
    table = (out / "compare.md").read_text()
    for method, label in METHOD_ROWS:
        assert (f"| {label} |" in table) == (method != "supervised")  # not asked for here
    # The shared step-1 network: ZS3Net and the CaGNet finetune start from the same file.
    stages = json.loads((out / "compare" / "zs3net" / "stage.json").read_text())
    finetune = json.loads((out / "compare" / "cagnet" / "finetune" / "stage.json").read_text())
    assert stages["signature"]["inputs"]["init"] == finetune["signature"]["inputs"]["init"]
    assert json.loads((out / "compare" / "spnet" / "stage.json").read_text())[
        "signature"]["config"]["train"]["iterations"] == 3
    # Self-training runs say so in their protocol (their pseudo-labels reach the losses): the
    # original's `st` phase labels every batch online; its `st_mixed` finetune uses seen labels.
    protocol = json.loads((out / "compare" / "cagnet_st" / "step1" / "metrics.json")
                          .read_text())["protocol"]
    assert "labelled online by the current model" in protocol["unseen_training_pixels"]
    protocol = json.loads((out / "compare" / "zs3net_st" / "zs3net" / "metrics.json")
                          .read_text())["protocol"]
    assert "pseudo-labelled" in protocol["unseen_training_pixels"]
    # A second run reuses every finished stage, and so does a run on a copy of the folder
    # (new modification times): the copy's own checkpoints, never the original's.
    assert main(["compare", "--config", str(recipe), "--output-dir", str(out)]) == 0
    stages = json.loads((out / "compare.json").read_text())["comparison"]["stages"]
    assert all(stage["reused"] for stage in stages.values())
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy)
    monkeypatch.chdir(tmp_path)  # and named relative to the working directory
    assert main(["compare", "--config", str(recipe), "--output-dir", "copy"]) == 0
    document = json.loads((copy / "compare.json").read_text())
    assert all(stage["reused"] for stage in document["comparison"]["stages"].values())
    assert all(Path(document[method]["checkpoint"]).is_relative_to(copy) for method in METHODS)


def test_a_stage_stopped_half_way_is_run_again(tmp_path: Path) -> None:
    """Found on MSRC: a re-run stopped by SIGTERM saved its iteration-55 checkpoint over the old
    one, and the next run reused the old record with that checkpoint."""
    pipeline = ComparePipeline(None, tmp_path, show_progress=False)
    checkpoint = tmp_path / "stage" / "last.pt"
    runs = []

    def action(tag: str):
        def run():
            runs.append(tag)
            checkpoint.parent.mkdir(exist_ok=True)
            checkpoint.write_text(tag)
            if tag == "stopped":
                raise KeyboardInterrupt
            return checkpoint, {"hiou": 0.5}, {}
        return run

    pipeline.stage("s", checkpoint.parent, {"iterations": 600}, {}, action("first"))
    assert pipeline.stage("s", checkpoint.parent, {"iterations": 600}, {},
                          action("unused")).reused
    with pytest.raises(KeyboardInterrupt):
        pipeline.stage("s", checkpoint.parent, {"iterations": 900}, {}, action("stopped"))
    outcome = pipeline.stage("s", checkpoint.parent, {"iterations": 600}, {}, action("again"))
    assert not outcome.reused and runs == ["first", "stopped", "again"]


def test_compare_recipe_errors_name_the_key(tmp_path: Path) -> None:
    base = {"step1": str(REPOSITORY / "experiments" / "voc12.yaml"),
            "finetune": str(REPOSITORY / "experiments" / "voc12_finetune.yaml")}
    cases = [({**base, "stepone": "x.yaml"}, "stepone"),
             ({**base, "stages": {"spnett": []}}, "spnett"),
             ({**base, "stages": {"spnet": "train.iterations=3"}}, "stages.spnet"),
             ({"finetune": base["finetune"]}, "step1"),
             ({**base, "overrides": [3]}, "overrides")]
    for index, (content, key) in enumerate(cases):
        path = tmp_path / f"recipe{index}.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(ConfigError, match=key):
            read_compare_recipe(path)


def test_split_without_validation_classes_is_refused(tiny_voc: Path, tmp_path: Path) -> None:
    recipe = _tiny_recipe(tiny_voc, tmp_path / "compare.yaml")
    (tiny_voc / "split.yaml").write_text("seen: [red circle, blue circle, red square]\n"
                                         "unseen: [blue square]\n")
    assert main(["compare", "--config", str(recipe), "--output-dir", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("name", ["shapes_compare", "voc12_compare", "context_compare",
                                  "cocostuff_compare"])
def test_shipped_compare_recipes_resolve(name: str) -> None:
    recipe = read_compare_recipe(REPOSITORY / "experiments" / f"{name}.yaml")
    assert set(recipe.stages) == set(STAGES)
    for stage in recipe.stages.values():  # every stage's config loads and validates
        load_config(stage.recipe, recipe.overrides + stage.overrides)


def test_pattern_checks_on_the_published_voc_numbers() -> None:
    published = {"spnet": (0.0002, 0.0001), "spnet_c": (0.2610, 0.1563),
                 "zs3net": (0.2874, 0.1765), "cagnet": (0.3972, 0.2659),
                 "zs3net_st": (0.3328, 0.2115), "cagnet_st": (0.4366, 0.3031)}
    entries = {method: {"scores": {"hiou": hiou, "miou_unseen": unseen}}
               for method, (hiou, unseen) in published.items()}
    assert all(check["holds"] for check in pattern_checks(entries))
    entries["cagnet"]["scores"]["hiou"] = 0.2
    assert not all(check["holds"] for check in pattern_checks(entries))
