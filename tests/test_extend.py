"""Adding classes without images: embedding rows from a word-vector file, the grown classifier
(old rows kept, extra logit last), a finetuning that changes only the classifier head, and
extended checkpoints that `cagnet predict` and `cagnet eval` read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cagnet.cli import main
from cagnet.config import LossConfig
from cagnet.engine.optim import Optimizers
from cagnet.engine.schedules import iteration_seed
from cagnet.engine.steps import LabelDraw, StepContext, classifier_step
from cagnet.errors import CagnetError, EmbeddingError
from cagnet.engine.checkpoint import load_model
from cagnet.baselines.shots import add_unseen_classes, finetune_classifier
from cagnet.inference.extend import (ExtensionSettings, extend_loaded_model, new_class_embeddings,
                                     parse_class_list)

from conftest import write_tiny_voc
from test_predict import train_tiny_checkpoint

# 4-d word vectors: the tiny benchmark's embeddings are normalised (colour + shape) one-hots.
WORDS = {"red": [1, 0, 0, 0], "blue": [0, 1, 0, 0], "circle": [0, 0, 1, 0],
         "square": [0, 0, 0, 1], "green": [0.6, 0.8, 0, 0], "triangle": [0, 0, 0.8, 0.6]}


def write_word_vectors(path: Path, words: dict[str, list[float]] = WORDS) -> Path:
    lines = [f"{len(words)} {len(next(iter(words.values())))}"]
    lines += [f"{word} " + " ".join(str(value) for value in vector)
              for word, vector in words.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def model_without_blue_square(base: Path) -> tuple[Path, Path]:
    """The tiny benchmark in `base/voc` and a model trained on it WITHOUT 'blue square'
    (neither seen nor unseen): (dataset root, checkpoint)."""
    root = write_tiny_voc(base / "voc")
    (root / "split_without.yaml").write_text("seen: [red circle, blue circle]\n"
                                             "unseen: [red square]\n")
    return root, train_tiny_checkpoint(root, base / "run", ("data.split=split_without.yaml",))


@pytest.fixture(scope="module")
def extension_run(tmp_path_factory):
    """A tiny model trained WITHOUT 'blue square' (neither seen nor unseen), and its data."""
    base = tmp_path_factory.mktemp("extend")
    root, checkpoint = model_without_blue_square(base)
    return base, root, checkpoint, write_word_vectors(base / "words.txt")


def test_new_rows_follow_the_embedding_rule_and_the_dimension_is_checked(extension_run,
                                                                          tmp_path: Path):
    base, root, _, words = extension_run
    rows, metadata = new_class_embeddings(["blue square"], 4, [("word2vec", str(words))])
    expected = np.load(root / "class_embeddings.npy")[4]  # the dataset's own row
    assert torch.allclose(rows[0], torch.as_tensor(expected), atol=1e-6)
    assert metadata["sources"][0]["sha256"]
    three = write_word_vectors(tmp_path / "three.txt", {"blue": [1, 0, 0], "square": [0, 1, 0]})
    with pytest.raises(EmbeddingError, match=r"3-d .* 4-d"):
        new_class_embeddings(["blue square"], 4, [("word2vec", str(three))])
    with pytest.raises(CagnetError, match="already classes"):
        parse_class_list("zebra, red circle", ["red circle"])


def test_growth_keeps_old_rows_and_finetuning_changes_only_the_classifier(extension_run):
    _, _, checkpoint, words = extension_run
    inference = load_model(checkpoint)
    model = inference.model
    head = model.discriminator.classifier
    old_weight, old_bias = head.weight.detach().clone(), head.bias.detach().clone()
    num_classes = model.num_classes
    rows, _ = new_class_embeddings(["blue square", "green triangle"], 4,
                                   [("word2vec", str(words))])
    add_unseen_classes(model, rows)
    head = model.discriminator.classifier
    assert model.class_embeddings.shape == (num_classes + 2, 4)
    assert torch.equal(model.class_embeddings[num_classes:], rows)
    assert head.weight.shape[0] == num_classes + 2 + 1  # the extra logit stays last
    assert torch.equal(head.weight[:num_classes], old_weight[:num_classes])
    assert torch.equal(head.bias[:num_classes], old_bias[:num_classes])
    assert torch.equal(head.weight[-1], old_weight[-1]) and head.bias[-1] == old_bias[-1]
    assert model.segment(torch.zeros(1, 3, 33, 33)).shape[1] == num_classes + 2

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    draw = LabelDraw(2, (5, 5), 3.0, torch.Generator())
    losses = finetune_classifier(model, model.discriminator.classifier,
                                 ExtensionSettings(iterations=5), torch.device("cpu"), draw)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"discriminator.classifier.weight", "discriminator.classifier.bias"}
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert len(losses) == 5 and all(np.isfinite(losses))


def test_extend_then_predict_and_eval_see_the_new_class(extension_run, tmp_path: Path,
                                                        capsys):
    base, root, checkpoint, words = extension_run
    extended = tmp_path / "extended.pt"
    assert main(["extend", "--checkpoint", str(checkpoint), "--add-classes", "blue square",
                 "--word-vectors", str(words), "--iterations", "10", "--out", str(extended),
                 "--device", "cpu"]) == 0
    assert "3 -> 4 classes" in capsys.readouterr().out
    assert "unseen: [\"red square\", \"blue square\"]" in \
        (tmp_path / "extended.split.yaml").read_text()
    out = tmp_path / "predictions"
    assert main(["predict", "--checkpoint", str(extended), "--input",
                 str(root / "JPEGImages" / "img_000.jpg"), "--out", str(out)]) == 0
    classes = json.loads((out / "predictions.json").read_text())["classes"]
    assert [c["tag"] for c in classes] == ["seen", "seen", "unseen", "added"]
    # The dataset's class-name file names 'blue square', so the extended checkpoint evaluates
    # as is: the stored config points to the split file written beside it.
    assert main(["eval", "--checkpoint", str(extended), "--output-dir",
                 str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [c["name"] for c in metrics["classes"]][-1] == "blue square"
    assert metrics["classes"][-1]["split"] == "unseen"


def test_predict_extends_in_memory_and_from_an_embedding_file(extension_run, tmp_path: Path):
    _, root, checkpoint, words = extension_run
    image = str(root / "JPEGImages" / "img_001.jpg")
    out = tmp_path / "memory"
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", image, "--out",
                 str(out), "--add-classes", "green triangle,blue square", "--word-vectors",
                 str(words), "--word-vectors-kind", "word2vec", "--iterations", "3"]) == 0
    classes = json.loads((out / "predictions.json").read_text())["classes"]
    assert [c["name"] for c in classes][-2:] == ["green triangle", "blue square"]
    rows = tmp_path / "rows.npy"
    np.save(rows, np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32))
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", image, "--out",
                 str(tmp_path / "file"), "--add-classes", "zebra", "--embeddings", str(rows),
                 "--iterations", "2"]) == 0
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((1, 6), dtype=np.float32))
    assert main(["extend", "--checkpoint", str(checkpoint), "--add-classes", "zebra",
                 "--embeddings", str(wrong), "--out", str(tmp_path / "x.pt")]) == 2


def test_class_order_permutes_classes_without_changing_predictions(extension_run,
                                                                   tmp_path: Path):
    _, root, checkpoint, words = extension_run
    order = tmp_path / "order.yaml"
    order.write_text("seen: [red circle, blue circle]\nunseen: [blue square, red square]\n")
    common = ["extend", "--checkpoint", str(checkpoint), "--add-classes", "blue square",
              "--word-vectors", str(words), "--iterations", "4", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "appended.pt")]) == 0
    assert main(common + ["--out", str(tmp_path / "ordered.pt"), "--class-order",
                          str(order)]) == 0
    appended = load_model(tmp_path / "appended.pt")
    ordered = load_model(tmp_path / "ordered.pt")
    assert appended.class_names[2:] == ["red square", "blue square"]
    assert ordered.class_names[2:] == ["blue square", "red square"]
    assert ordered.tags == ["seen", "seen", "added", "unseen"]
    images = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        expected = appended.model.segment(images)[:, [0, 1, 3, 2]]
        assert torch.allclose(ordered.model.segment(images), expected, atol=1e-5)
    order.write_text("seen: [red circle]\nunseen: [blue circle, blue square, red square]\n")
    assert main(common + ["--out", str(tmp_path / "bad.pt"), "--class-order", str(order)]) == 2


def test_without_shots_extension_is_the_step2_finetune_it_always_was(extension_run):
    """No --shots: the same weights, bit for bit, as the original algorithm (grow the head,
    then Adam on the head alone over step-2 iterations seeded per iteration)."""
    _, _, checkpoint, words = extension_run
    settings = ExtensionSettings(iterations=6, seed=3)
    extended = load_model(checkpoint)
    extend_loaded_model(extended, ["blue square"], [("word2vec", str(words))], None, settings)

    reference = load_model(checkpoint)
    model = reference.model
    rows, _ = new_class_embeddings(["blue square"], 4, [("word2vec", str(words))])
    grid = model.feature_size(reference.config.data.crop_size, reference.config.data.crop_size)
    add_unseen_classes(model, rows)
    model.requires_grad_(False)
    head = model.discriminator.classifier.requires_grad_(True)
    adam = torch.optim.Adam(head.parameters(), lr=settings.lr)
    draw = LabelDraw(reference.config.train.batch_size, tuple(grid),
                     reference.config.train.gen_unseen_rate, torch.Generator())
    loss = LossConfig(step2_discriminator_cls_fake=1.0, step2_generator_cls_fake=0.0)
    for iteration in range(settings.iterations):
        torch.manual_seed(iteration_seed(settings.seed, iteration))
        model.train()
        draw.generator.manual_seed(iteration_seed(settings.seed, iteration))
        classifier_step(model, Optimizers(None, adam, None), loss, draw,
                        StepContext(torch.device("cpu")))
    for (name, value), expected in zip(extended.model.state_dict().items(),
                                       model.state_dict().values()):
        assert torch.equal(value, expected), name
