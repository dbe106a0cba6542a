"""Learning added classes from a few labelled images: the shots folder, `cagnet extend --shots`
(shots read and used, the generator adapted only on request), the two baselines (pixel
classifier, synthesised labels), and `cagnet fewshot` end to end, whose shots never come from
the test images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cagnet.baselines.fewshot import check_training_only, read_fewshot_recipe
from cagnet.baselines.shot_network import NetworkFinetune, shot_batch_size
from cagnet.baselines.shots import (PixelSettings, add_unseen_classes, ensemble_labels,
                                    frozen_maps, pool_of, read_shots, synthesise_labels,
                                    train_pixel_classifier)
from cagnet.cli import main
from cagnet.config import load_config
from cagnet.datasets.build import build_dataset, build_split
from cagnet.engine.checkpoint import load_checkpoint, load_model
from cagnet.engine.steps import sample_step2_labels
from cagnet.errors import ConfigError, DataError

from conftest import REPOSITORY, tiny_config_overrides
from test_extend import model_without_blue_square, write_word_vectors

CPU = torch.device("cpu")


def write_shots(folder: Path, root: Path, ids: list[str], names: list[str]) -> Path:
    """A shots folder from tiny-benchmark images: mask value i = names[i] (dataset ids of the
    tiny class list), every other pixel 255."""
    dataset_names = (root / "class_names.txt").read_text().split("\n")
    lookup = np.full(256, 255, dtype=np.uint8)
    for value, name in enumerate(names):
        lookup[dataset_names.index(name)] = value
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for image_id in ids:
        (folder / "images" / f"{image_id}.jpg").write_bytes(
            (root / "JPEGImages" / f"{image_id}.jpg").read_bytes())
        mask = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        Image.fromarray(lookup[mask], mode="L").save(folder / "masks" / f"{image_id}.png")
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny model trained WITHOUT 'blue square', its data, word vectors and two shots."""
    base = tmp_path_factory.mktemp("fewshot")
    root, checkpoint = model_without_blue_square(base)
    shots = write_shots(base / "shots", root, ["img_000", "img_001"],
                        ["blue square", "red circle"])
    return base, root, checkpoint, write_word_vectors(base / "words.txt"), shots


def test_shots_folder_is_read_and_checked(base_run, tmp_path: Path) -> None:
    _, root, _, _, shots = base_run
    classes = ["red circle", "blue circle", "red square", "blue square"]
    read = read_shots(shots, classes)
    assert [shot.name for shot in read] == ["img_000", "img_001"]
    assert read[0].image.shape == (40, 48, 3) and read[0].labels.shape == (40, 48)
    image, labels = read[0].warped([104.0, 117.0, 123.0], 41)
    assert image.shape == (3, 41, 41) and labels.shape == (40, 48)
    assert set(labels.unique().tolist()) == {0, 3, 255}  # red circle, blue square, unlabelled
    with pytest.raises(DataError, match=r"\['blue square'\] are neither"):
        read_shots(write_shots(tmp_path / "bad", root, ["img_000"], ["blue square"]),
                   ["red circle"])
    stray = write_shots(tmp_path / "stray", root, ["img_000"], ["blue square"])
    Image.fromarray(np.full((40, 48), 7, np.uint8), mode="L").save(stray / "masks" / "img_000.png")
    with pytest.raises(DataError, match=r"values \[7\]"):
        read_shots(stray, classes)


def test_extend_with_shots_uses_them(base_run, tmp_path: Path, capsys) -> None:
    _, _, checkpoint, words, shots = base_run
    common = ["extend", "--checkpoint", str(checkpoint), "--add-classes", "blue square",
              "--word-vectors", str(words), "--iterations", "6", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "zero.pt")]) == 0
    assert main(common + ["--out", str(tmp_path / "shots.pt"), "--shots", str(shots)]) == 0
    assert "shots: 2 images" in capsys.readouterr().out
    summary = load_checkpoint(tmp_path / "shots.pt")["extra"]["extension"]
    assert summary["shot_images"] == ["img_000", "img_001"]
    # the shots' blue square and red circle, and the replayed seen classes' training pixels
    assert set(summary["real_pixels_per_class"]) == {"red circle", "blue circle", "blue square"}
    zero, used = (load_model(tmp_path / name).model.state_dict() for name in ("zero.pt",
                                                                             "shots.pt"))
    changed = {key for key in zero if not torch.equal(zero[key], used[key])}
    assert changed == {"discriminator.classifier.weight", "discriminator.classifier.bias"}
    assert main(common + ["--out", str(tmp_path / "adapted.pt"), "--shots", str(shots),
                          "--adapt-generator", "--replay-images", "0"]) == 0
    adapted = load_model(tmp_path / "adapted.pt").model.state_dict()
    assert any(not torch.equal(zero[key], adapted[key]) for key in zero
               if key.startswith("generator."))
    summary = load_checkpoint(tmp_path / "adapted.pt")["extra"]["extension"]
    assert set(summary["real_pixels_per_class"]) == {"red circle", "blue square"}  # no replay
    assert main(common + ["--out", str(tmp_path / "whole.pt"), "--shots", str(shots),
                          "--train-discriminator"]) == 0
    whole = load_model(tmp_path / "whole.pt").model.state_dict()
    changed = {key for key in zero if not torch.equal(zero[key], whole[key])}
    assert {"discriminator.classifier.weight", "discriminator.trunk.conv.weight"} <= changed
    assert not any(key.startswith(("backbone.", "generator.", "context.")) for key in changed)
    assert main(common + ["--out", str(tmp_path / "zero_whole.pt"),
                          "--train-discriminator"]) == 0  # no shots: the head only, as before
    zero_whole = load_model(tmp_path / "zero_whole.pt").model.state_dict()
    assert all(torch.equal(zero[key], zero_whole[key]) for key in zero)
    (tmp_path / "wrong").mkdir()
    assert main(common + ["--out", str(tmp_path / "x.pt"), "--shots", str(tmp_path / "wrong")]) \
        == 2


def test_shot_classes_can_learn_from_their_pixels_alone(base_run, tmp_path: Path) -> None:
    _, _, checkpoint, words, shots = base_run
    common = ["extend", "--checkpoint", str(checkpoint), "--add-classes", "blue square",
              "--word-vectors", str(words), "--iterations", "6", "--device", "cpu",
              "--shots", str(shots)]
    assert main(common + ["--out", str(tmp_path / "both.pt")]) == 0
    assert main(common + ["--out", str(tmp_path / "real.pt"), "--no-generated-shot-classes"]) == 0
    assert "not_generated" not in load_checkpoint(tmp_path / "both.pt")["extra"]["extension"]
    summary = load_checkpoint(tmp_path / "real.pt")["extra"]["extension"]
    assert summary["not_generated"] == ["blue square"] and not summary["generate_shot_classes"]
    both, real = (load_model(tmp_path / name).model.state_dict() for name in ("both.pt",
                                                                             "real.pt"))
    assert not torch.equal(both["discriminator.classifier.weight"],
                           real["discriminator.classifier.weight"])


def test_network_iterations_train_the_whole_network_on_shots(base_run, tmp_path: Path,
                                                             capsys) -> None:
    _, root, checkpoint, words, shots = base_run
    common = ["extend", "--checkpoint", str(checkpoint), "--add-classes", "blue square",
              "--word-vectors", str(words), "--iterations", "2", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "frozen.pt"), "--shots", str(shots)]) == 0
    assert main(common + ["--out", str(tmp_path / "trained.pt"), "--shots", str(shots),
                          "--network-iterations", "3"]) == 0
    frozen, trained = (load_model(tmp_path / name).model.state_dict()
                       for name in ("frozen.pt", "trained.pt"))
    changed = {key.split(".")[0] for key in frozen if not torch.equal(frozen[key], trained[key])}
    assert {"backbone", "context", "generator", "discriminator"} <= changed
    summary = load_checkpoint(tmp_path / "trained.pt")["extra"]["extension"]
    assert summary["network"]["iterations"] == 3 and summary["network"]["shot_crops_per_batch"] == 1
    assert np.isfinite(summary["network"]["cls_real_last"])
    # without shots there is nothing to train the network on: today's zero-shot extension
    assert main(common + ["--out", str(tmp_path / "zero.pt")]) == 0
    assert main(common + ["--out", str(tmp_path / "zero_net.pt"),
                          "--network-iterations", "3"]) == 0
    zero, zero_net = (load_model(tmp_path / name).model.state_dict()
                      for name in ("zero.pt", "zero_net.pt"))
    assert all(torch.equal(zero[key], zero_net[key]) for key in zero)
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "x.pt"), "--shots", str(shots),
                          "--network-iterations", "3", "--shot-share", "0"]) == 2
    assert "--shot-share" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    # the network also trains on the model's training images: a moved dataset is named
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["config"]["data"]["root"] = str(tmp_path / "moved")
    torch.save(state, tmp_path / "moved.pt")
    moved = ["extend", "--checkpoint", str(tmp_path / "moved.pt"), "--add-classes",
             "blue square", "--word-vectors", str(words), "--iterations", "2", "--device", "cpu",
             "--shots", str(shots)]
    assert main(moved + ["--out", str(tmp_path / "y.pt"), "--network-iterations", "3"]) == 2
    error = capsys.readouterr().err
    assert "--network-iterations" in error and "moved" in error and "--data-root" in error
    assert not (tmp_path / "y.pt").exists()
    assert main(moved + ["--out", str(tmp_path / "y.pt"), "--network-iterations", "3",
                         "--data-root", str(root)]) == 0
    assert load_checkpoint(tmp_path / "y.pt")["config"]["data"]["root"] == str(root.resolve())


def test_network_batches_label_new_classes_only_in_shot_crops(base_run) -> None:
    _, root, checkpoint, _, shots = base_run
    loaded = load_model(checkpoint)
    classes = loaded.class_names + ["blue square"]
    add_unseen_classes(loaded.model, torch.tensor([[0.0, 0.7, 0.0, 0.7]]))
    config = load_config(None, tiny_config_overrides(root) + ["train.batch_size=4"])
    full = build_split(config)  # blue square unseen: hidden in training labels
    training = build_dataset(config.data, full, 0, "train")
    shot_images = read_shots(shots, classes)
    method = NetworkFinetune(loaded.model, config, shot_images, training, 5, 0.5, 0, CPU)
    assert method.from_shots == 2 and shot_batch_size(8, 0.01) == 1 \
        and shot_batch_size(2, 1.0) == 2
    seen_new = False
    for iteration in range(6):
        images, labels = method.batch(iteration)
        assert images.shape == (4, 3, 33, 33) and labels.shape == (4, 33, 33)
        assert not (labels[2:] == 3).any()  # training crops: blue square is never labelled
        seen_new |= bool((labels[:2] == 3).any())
    assert seen_new  # the shots' blue square is
    assert all(torch.equal(a, b) for a, b in zip(method.batch(4), method.batch(4)))


def test_step2_labels_never_draw_excluded_classes() -> None:
    def draw(*excluded: int) -> torch.Tensor:
        return sample_step2_labels(4, 9, 9, 3, 3, 2.0, torch.Generator().manual_seed(0), excluded)
    assert set(draw().unique().tolist()) == set(range(6))
    assert set(draw(4).unique().tolist()) == {0, 1, 2, 3, 5}
    assert set(draw(0, 5).unique().tolist()) == {1, 2, 3, 4}


def test_both_baselines_train_and_label(base_run) -> None:
    _, root, checkpoint, _, shots = base_run
    loaded = load_model(checkpoint)
    model = loaded.model
    classes = loaded.class_names + ["blue square"]
    maps = [frozen_maps(model, *shot.warped([104.0, 117.0, 123.0], 41), CPU)[::2]
            for shot in read_shots(shots, classes)]
    pool = pool_of(maps)
    assert set(pool.labels.tolist()) == {0, 3}
    add_unseen_classes(model, torch.tensor([[0.0, 0.7, 0.0, 0.7]]))
    segmenter = model.discriminator
    settings = PixelSettings(iterations=4, real_pixels=64, pixels_per_image=20, keep_fraction=0.5)
    members = [train_pixel_classifier(model, pool, settings, seed, CPU) for seed in (0, 1)]
    assert model.discriminator is members[1] and members[0] is not segmenter
    assert model.segment(torch.zeros(1, 3, 33, 33)).shape[1] == 4
    rows = torch.rand(10, 4)
    labels, disagreement = ensemble_labels([members[0], members[0]], rows)
    assert labels.shape == (10,) and torch.allclose(disagreement, torch.zeros(10), atol=1e-6)
    assert (ensemble_labels(members, rows)[1] >= -1e-6).all()
    config = load_config(None, tiny_config_overrides(root))  # the full split: blue square unseen
    dataset = build_dataset(config.data, build_split(config), 0, "train", eval_warp=41)
    lookup = build_split(config).test_lookup()
    kept, diagnostics = synthesise_labels(model, members, dataset, [2, 3], settings, 0, lookup,
                                          [3], CPU)
    assert diagnostics["labelled_pixels"] == 2 * 20 and diagnostics["kept_pixels"] == 20
    assert len(kept.labels) == 20 and 0 <= diagnostics["all_right"] <= 1


def _tiny_recipe(root: Path, path: Path) -> Path:
    (root / "split.yaml").write_text("seen: [red circle, blue circle]\n"
                                     "unseen: [red square, blue square]\n")
    # img_000 is in both lists: it holds every class, yet must never be drawn as a shot
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("img_004\nimg_005\nimg_000\n")
    path.write_text(yaml.safe_dump({
        "step1": str(REPOSITORY / "experiments" / "voc12.yaml"),
        "finetune": str(REPOSITORY / "experiments" / "voc12_finetune.yaml"),
        "add_classes": ["blue square"], "seed": 1,
        "overrides": tiny_config_overrides(root) + ["train.mixed_period=1"],
        "supervised": ["train.iterations=2"],
        "extension": {"iterations": 3, "replay_images": 2},
        "network": {"iterations": 2, "shot_share": 0.5},
        "pixel_classifier": {"iterations": 3, "ensemble": 2, "label_images": 2,
                             "pixels_per_image": 20}}))
    return path


def test_fewshot_end_to_end_draws_shots_from_training_images_only(tiny_voc: Path,
                                                                   tmp_path: Path) -> None:
    recipe, out = _tiny_recipe(tiny_voc, tmp_path / "fewshot.yaml"), tmp_path / "out"
    command = ["fewshot", "--config", str(recipe), "--shots", "0,1,2", "--draws", "2",
               "--output-dir", str(out)]
    assert main(command) == 0
    document = json.loads((out / "fewshot.json").read_text())
    assert list(document["methods"]["cagnet"]) == ["0", "1", "2"]
    assert list(document["methods"]["pixel_classifier"]) == ["1", "2"]
    assert list(document["methods"]["cagnet_network"]) == ["1", "2"]
    network = document["methods"]["cagnet_network"]["2"]["details"][0]["network"]
    assert network["iterations"] == 2
    for entry in document["methods"]["synthesised_labels"].values():
        assert len(entry["new_iou"]["values"]) == 2 and entry["details"][0]["synthesised_labels"]
    assert document["references"]["supervised"] is not None
    training = set((tiny_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    stages = {(k, d): out / "fewshot" / "cagnet" / f"k{k}_draw{d}" / "stage.json"
              for k in (1, 2) for d in (0, 1)}
    drawn = {key: json.loads(path.read_text())["signature"]["config"]["shots"]
             for key, path in stages.items()}
    assert all(set(ids) <= training - {"img_000"} for ids in drawn.values())
    assert drawn[1, 1] == drawn[2, 1][:1] and len(drawn[2, 0]) == 2
    assert (out / "fewshot.png").stat().st_size > 0 and "| CaGNet extension | 0 |" in \
        (out / "fewshot.md").read_text()
    assert main(command) == 0  # a re-run reuses every stage
    document = json.loads((out / "fewshot.json").read_text())
    assert len(document["reused"]) == 2 + 1 + 1 + 4 * 2 * 2
    content = yaml.safe_load(recipe.read_text())
    content["extension"]["train_discriminator"] = True
    recipe.write_text(yaml.safe_dump(content))
    assert main(command) == 0  # a CaGNet-only change re-runs CaGNet's stages only
    reused = json.loads((out / "fewshot.json").read_text())["reused"]
    assert not any(name.startswith(("cagnet_k", "cagnet_network_k")) for name in reused)
    assert sum(name.startswith(("pixel_classifier", "synthesised_labels")) for name in reused) \
        == 2 * 2 * 2
    with pytest.raises(DataError, match="img_000"):
        check_training_only(["img_001", "img_000"], ["img_000"])


def test_fewshot_recipe_errors_name_the_key(tmp_path: Path) -> None:
    base = {"step1": str(REPOSITORY / "experiments" / "voc12.yaml"),
            "finetune": str(REPOSITORY / "experiments" / "voc12_finetune.yaml"),
            "add_classes": ["cow"]}
    cases = [({**base, "shot": 1}, "shot"), ({**base, "add_classes": "cow"}, "add_classes"),
             ({**base, "extension": {"iters": 3}}, "iters"),
             ({**base, "extension": {"network_iterations": 3}}, "network_iterations"),
             ({**base, "network": {"iterations": "many"}}, "iterations"),
             ({**base, "pixel_classifier": {"ensemble": "two"}}, "ensemble")]
    for index, (content, key) in enumerate(cases):
        path = tmp_path / f"recipe{index}.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(ConfigError, match=key):
            read_fewshot_recipe(path)
    shipped = read_fewshot_recipe(REPOSITORY / "experiments" / "shapes_fewshot.yaml")
    assert shipped.add_classes == ["plain yellow"] and shipped.supervised


def test_new_subcommand_help_shows_an_example(capsys) -> None:
    for command in ("fewshot", "extend"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--shots" in capsys.readouterr().out.split("examples:")[1]
    assert main(["fewshot", "--shots", "1,x"]) == 2


def test_fewshot_command_finds_installed_recipes_by_name(tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    """The README's `cagnet fewshot --config shapes_fewshot` (a name, as `compare` takes)."""
    import cagnet.baselines.fewshot as fewshot

    recipes = []

    def record(recipe: Path, output_dir: Path, *settings) -> None:
        recipes.append(recipe)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "fewshot.md").write_text("table\n")

    monkeypatch.setattr(fewshot, "run_fewshot", record)
    for name in ("shapes_fewshot", "msrc_fewshot", "experiments/msrc_fewshot.yaml"):
        assert main(["fewshot", "--config", name, "--output-dir", str(tmp_path)]) == 0
    assert [path.resolve() for path in recipes] == [
        (REPOSITORY / "experiments" / f"{name}.yaml").resolve()
        for name in ("shapes_fewshot", "msrc_fewshot", "msrc_fewshot")]
    assert main(["fewshot", "--config", "no_such_recipe", "--output-dir", str(tmp_path)]) == 2
    assert "no_such_recipe" in capsys.readouterr().err
