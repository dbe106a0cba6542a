"""`cagnet audit` (no unseen label value reaches a training target, and it fails loudly when
the lookup leaks one) and the protocol card (`protocol.json` at training start)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cagnet.datasets.build import build_benchmark
from cagnet.cli import main
from cagnet.config import load_config
from cagnet.datasets.splits import ClassSplit, read_class_names, read_split
from cagnet.tools.audit import lookup_violations
from cagnet.engine.protocol import _background, protocol_card

from conftest import REPOSITORY, tiny_config_overrides

RECIPE = str(REPOSITORY / "experiments" / "voc12.yaml")


def _sets(root: Path) -> list[str]:
    return [argument for item in tiny_config_overrides(root) for argument in ("--set", item)]


def test_audit_passes_on_the_real_pipeline_and_counts_unseen_pixels(tiny_voc: Path,
                                                                    tmp_path: Path, capsys):
    out = tmp_path / "audit.json"
    assert main(["audit", "--config", RECIPE, *_sets(tiny_voc), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["images"] == 4 and not report["violations"]
    assert set(report["target_counts"]) <= {"0", "1", "2", "255"}
    assert report["unseen_raw_pixels"] == report["raw_counts"]["blue square"] > 0
    assert report["target_classes"]["red circle"] > 0
    assert "OK: every training target value" in capsys.readouterr().out


def test_audit_fails_when_the_lookup_leaks_an_unseen_class(tiny_voc: Path, tmp_path: Path,
                                                           monkeypatch, capsys):
    correct = ClassSplit.train_lookup
    for leaked_to in (3, 0):  # a value outside 0..S-1, and one disguised as a seen class

        def leaky(split: ClassSplit, value: int = leaked_to) -> np.ndarray:
            lookup = correct(split)
            lookup[4] = value  # "blue square", the unseen class
            return lookup

        monkeypatch.setattr(ClassSplit, "train_lookup", leaky)
        out = tmp_path / f"audit_{leaked_to}.json"
        assert main(["audit", "--config", RECIPE, *_sets(tiny_voc), "--out", str(out)]) == 1
        report = json.loads(out.read_text())
        assert not report["ok"]
        assert any("blue square" in violation for violation in report["violations"])
        if leaked_to == 3:
            assert any("outside 0..2" in violation for violation in report["violations"])
    assert "violations:" in capsys.readouterr().out


def test_lookup_of_every_shipped_split_is_clean():
    for dataset, split_name, class_file in (("voc12", "split_spnet", "class_names"),
                                            ("voc12", "split_zs3_10", "class_names"),
                                            ("context", "split_cagnet", "class_names"),
                                            ("context", "split_zs3_10", "class_names_59"),
                                            ("cocostuff", "split_spnet", "class_names")):
        names = read_class_names(REPOSITORY / "data" / dataset / f"{class_file}.txt")
        split = read_split(REPOSITORY / "data" / dataset / f"{split_name}.yaml", names)
        assert lookup_violations(split) == [], (dataset, split_name)


def test_protocol_card_and_protocol_json_at_training_start(tiny_voc: Path, tmp_path: Path):
    config = load_config(None, tiny_config_overrides(tiny_voc) +
                         ["data.drop_images_with_unseen=true", "eval.protocol=original"])
    card = protocol_card(config, build_benchmark(config).split, 4)
    digest = hashlib.sha256((tiny_voc / "class_embeddings.npy").read_bytes()).hexdigest()
    assert card["embedding_sha256"] == digest and card["embedding_dim"] == 4
    assert "inductive" in card["setting"] and "not a class" in card["background"]
    assert "removed" in card["unseen_training_pixels"]
    assert "feature grid" in card["evaluation_resolution"]
    assert card["split_file"].endswith("split.yaml")
    assert card["unseen_classes"] == ["blue square"]

    def background(dataset: str, split_name: str) -> str:
        names = read_class_names(REPOSITORY / "data" / dataset / "class_names.txt")
        split = read_split(REPOSITORY / "data" / dataset / f"{split_name}.yaml", names)
        return _background(split)

    assert "seen class" in background("voc12", "split_zs3_2")
    assert "no background class" in background("cocostuff", "split_spnet")

    assert main(["train", "--config", RECIPE, *_sets(tiny_voc), "--set", "train.iterations=1",
                 "--output-dir", str(tmp_path / "run")]) == 0
    written = json.loads((tmp_path / "run" / "protocol.json").read_text())
    assert written["seen_classes"] == ["red circle", "blue circle", "red square"]
    assert "reaches any loss" in written["unseen_training_pixels"]
