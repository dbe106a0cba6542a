"""`cagnet import-checkpoint` on state dicts synthesised in the original key layouts: pinned
key pairs, every key of the paper-sized VOC model consumed (meta device, 659 keys), a round
trip through a real file into `cagnet eval` and `cagnet finetune --from`, loud failures
naming the key, the extra logit, embedding checks, DeepLab-v2 and torchvision trunk inits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cagnet.datasets.build import build_benchmark
from cagnet.models.build import build_cagnet
from cagnet.engine.checkpoint import load_backbone_init
from cagnet.cli import main
from cagnet.config import load_config
from cagnet.engine.checkpoint import load_checkpoint
from cagnet.tools.import_original import convert_backbone_init, convert_original
from cagnet.errors import CheckpointError
from cagnet.models import DeepLabV2
from cagnet.tools.original_keys import (original_key, to_original_key, torchvision_trunk_key,
                                         trunk_key)

from conftest import REPOSITORY, tiny_config_overrides

HIDDEN = 2  # tiny config: generator_hidden [16, 16]


def _tiny(root: Path, extra: tuple[str, ...] = ()):
    config = load_config(None, tiny_config_overrides(root) + list(extra))
    benchmark = build_benchmark(config)
    torch.manual_seed(0)
    model = build_cagnet(config.model, benchmark.class_embeddings, benchmark.split.num_seen)
    return config, model


def _original_from(model: torch.nn.Module, hidden: int, num_seen: int) -> dict:
    """The model's weights in the original release's key layout (what `voc12_ourbest.pth`
    looks like): num_batches_tracked per BatchNorm, Em_vis (256 rows) and Em_all."""
    original = {}
    for key, value in model.state_dict().items():
        if key == "class_embeddings":
            continue
        original[to_original_key(key, hidden)] = value.clone()
        if key.endswith(".running_mean"):
            counter = key.replace("running_mean", "num_batches_tracked")
            original[to_original_key(counter, hidden)] = torch.tensor(40000)
    embeddings = model.state_dict()["class_embeddings"]
    original["Em_all.weight"] = embeddings.clone()
    em_vis = torch.zeros(256, embeddings.shape[1], device=embeddings.device)
    em_vis[:num_seen] = embeddings[:num_seen]
    original["Em_vis.weight"] = em_vis
    return original


def test_pinned_key_pairs():
    pairs = {
        "back.scale.layer1.conv1.conv.weight": "backbone.stem.conv.weight",
        "back.scale.layer1.conv1.bn.running_var": "backbone.stem.bn.running_var",
        "back.scale.layer2.block1.reduce.conv.weight": "backbone.res2.0.reduce.conv.weight",
        "back.scale.layer3.block1.proj.bn.bias": "backbone.res3.0.projection.bn.bias",
        "back.scale.layer4.block23.conv3x3.bn.weight": "backbone.res4.22.conv3x3.bn.weight",
        "back.scale.layer5.block3.increase.conv.weight": "backbone.res5.2.increase.conv.weight",
        "back.scale.aspp.stages.c3.bias": "backbone.aspp.branches.3.bias",
        "back.scale.contextual2.conv.weight": "context.context_convs.1.weight",
        "back.scale.fc_1.conv.weight": "context.selector.weight",
        "back.scale.contextualpool.conv.weight": "context.pool.weight",
        "back.scale.contextuallocalmu.conv.weight": "context.latent_mean.weight",
        "back.scale.contextuallocalsigma.conv.weight": "context.latent_logvar.weight",
        "gen.mlp.4.conv.bias": "generator.hidden_layers.4.conv.bias",
        "gen.mlp.5.weight": "generator.output.weight",
        "dis.fc.conv.weight": "discriminator.trunk.conv.weight",
        "dis.pred.bias": "discriminator.adversarial_head.bias",
        "dis.cls.weight": "discriminator.classifier.weight",
    }
    for original, project in pairs.items():
        assert original_key(original, 5) == project, original
        assert to_original_key(project, 5) == original, project
    for unmatched in ("back.scale.layer2.block0.reduce.conv.weight", "gen.mlp.5.conv.weight",
                      "gen.mlp.6.weight", "Em_all.weight", "back.layer1.conv1.conv.weight"):
        assert original_key(unmatched, 5) is None, unmatched
    assert trunk_key("layer4.block2.proj.bn.running_mean") == "res4.1.projection.bn.running_mean"
    assert torchvision_trunk_key("layer1.0.downsample.1.running_mean") == \
        "res2.0.projection.bn.running_mean"
    assert torchvision_trunk_key("layer4.2.conv3.weight") == "res5.2.increase.conv.weight"
    assert torchvision_trunk_key("layer3.5.bn2.bias") == "res4.5.conv3x3.bn.bias"
    assert torchvision_trunk_key("bn1.weight") == "stem.bn.weight"
    assert torchvision_trunk_key("fc.weight") is None


def test_paper_voc_model_consumes_all_659_original_keys():
    config = load_config(REPOSITORY / "experiments" / "voc12.yaml")
    with torch.device("meta"):
        model = build_cagnet(config.model, np.ones((20, 600), dtype=np.float32), 15)
    original = _original_from(model, 5, 15)
    assert len(original) == 659  # method.md §6
    conversion = convert_original(original, model.state_dict(), 5)
    assert sorted(conversion.consumed) == sorted(original)
    assert set(conversion.state) == set(model.state_dict()) - {"class_embeddings"}
    assert conversion.state["discriminator.classifier.weight"].shape == (21, 1024, 1, 1)


def test_round_trip_into_eval_and_finetune(tiny_voc: Path, tmp_path: Path):
    config, model = _tiny(tiny_voc)
    torch.save({"iteration": 1234, "state_dict": _original_from(model, HIDDEN, 3)},
               tmp_path / "ourbest.pth")
    sets = [argument for item in tiny_config_overrides(tiny_voc) for argument in ("--set", item)]
    arguments = ["import-checkpoint", str(tmp_path / "ourbest.pth"), str(tmp_path / "out.pt"),
                 "--config", str(REPOSITORY / "experiments" / "voc12.yaml"), *sets]
    assert main(arguments) == 0
    state = load_checkpoint(tmp_path / "out.pt")
    assert state["iteration"] == 1234
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    rebuilt = build_cagnet(config.model, build_benchmark(config).class_embeddings, 3)
    rebuilt.load_state_dict(state["model"])
    rebuilt.eval()
    images = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        first, second = rebuilt(images), rebuilt(images)
    assert torch.equal(first, second) and torch.isfinite(first).all()
    assert main(["eval", "--checkpoint", str(tmp_path / "out.pt"),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    assert main(["finetune", "--config", str(REPOSITORY / "experiments" / "voc12_finetune.yaml"),
                 *sets, "--set", "train.iterations=2", "--set", "train.mixed_period=1",
                 "--from", str(tmp_path / "out.pt"), "--output-dir", str(tmp_path / "ft")]) == 0


def test_wrong_shape_extra_and_missing_keys_fail_naming_the_key(tiny_voc: Path):
    _, model = _tiny(tiny_voc)
    reference = model.state_dict()
    good = _original_from(model, HIDDEN, 3)
    wrong = dict(good, **{"back.scale.contextual1.conv.weight": torch.zeros(8, 4, 1, 1)})
    extra = dict(good, **{"back.scale.layer6.block1.reduce.conv.weight": torch.zeros(1)})
    missing = {k: v for k, v in good.items() if k != "gen.mlp.2.bias"}
    for original, name in ((wrong, "back.scale.contextual1.conv.weight"),
                           (extra, "back.scale.layer6.block1.reduce.conv.weight"),
                           (missing, "gen.mlp.2.bias")):
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            convert_original(original, reference, HIDDEN)
    both = {k: v for k, v in wrong.items() if k != "dis.pred.weight"}
    with pytest.raises(CheckpointError) as error:
        convert_original(both, reference, HIDDEN)
    assert "contextual1" in str(error.value) and "dis.pred.weight" in str(error.value)


def test_extra_logit_row_is_kept_or_dropped(tiny_voc: Path):
    _, model = _tiny(tiny_voc)  # extra_logit true: 4 classes + 1 row
    original = _original_from(model, HIDDEN, 3)
    _, plain = _tiny(tiny_voc, ("model.extra_logit=false",))
    conversion = convert_original(original, plain.state_dict(), HIDDEN)
    weight = conversion.state["discriminator.classifier.weight"]
    assert weight.shape[0] == 4 and torch.equal(weight, original["dis.cls.weight"][:4])
    assert any("extra logit" in note for note in conversion.notes)
    short = _original_from(plain, HIDDEN, 3)
    with pytest.raises(CheckpointError, match=r"dis\.cls\.weight"):
        convert_original(short, model.state_dict(), HIDDEN)


def test_embedding_table_mismatch_warns_and_bad_shape_fails(tiny_voc: Path, tmp_path: Path,
                                                             caplog):
    config, model = _tiny(tiny_voc)
    original = _original_from(model, HIDDEN, 3)
    original["Em_all.weight"][3] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.save({"iteration": 1, "state_dict": original}, tmp_path / "a.pth")
    from cagnet.tools.import_original import import_checkpoint

    with caplog.at_level(logging.WARNING, logger="cagnet"):
        import_checkpoint(tmp_path / "a.pth", tmp_path / "a.pt", config)
    assert "Em_all.weight differs" in caplog.text and "blue square" in caplog.text
    original["Em_all.weight"] = torch.zeros(5, 4)
    torch.save({"iteration": 1, "state_dict": original}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"Em_all\.weight: shape \(5, 4\)"):
        import_checkpoint(tmp_path / "b.pth", tmp_path / "b.pt", config)


def test_deeplab_init_file_becomes_a_model_init(tiny_voc: Path, tmp_path: Path):
    config, model = _tiny(tiny_voc)
    init = {}
    for key, value in model.backbone.state_dict().items():
        original = to_original_key(f"backbone.{key}", HIDDEN)[len("back.scale."):]
        init[original] = value.clone() + 1.0
    init["aspp.stages.c0.weight"] = torch.zeros(21, 32, 3, 3)  # a 21-class head: ignored
    init["fc8.weight"] = torch.zeros(1000, 32)
    torch.save(init, tmp_path / "deeplabv2_init.pth")
    sets = [argument for item in tiny_config_overrides(tiny_voc) for argument in ("--set", item)]
    assert main(["import-checkpoint", "--init-only", str(tmp_path / "deeplabv2_init.pth"),
                 str(tmp_path / "init.pt"), "--config",
                 str(REPOSITORY / "experiments" / "voc12.yaml"), *sets]) == 0
    _, fresh = _tiny(tiny_voc)
    kept = load_backbone_init(fresh, tmp_path / "init.pt")
    assert kept and all(key.startswith("aspp.") for key in kept)
    stem = model.backbone.state_dict()["res3.0.projection.bn.running_var"] + 1.0
    assert torch.equal(fresh.backbone.state_dict()["res3.0.projection.bn.running_var"], stem)
    # An init with an ASPP of the embedding's width (COCO-Stuff's SPNet init) keeps it.
    for key, value in model.backbone.aspp.state_dict().items():
        branch, name = key.split(".")[1:]
        init[f"aspp.stages.c{branch}.{name}"] = value.clone() + 2.0
    torch.save(init, tmp_path / "spnet_init.pth")
    assert main(["import-checkpoint", "--init-only", str(tmp_path / "spnet_init.pth"),
                 str(tmp_path / "init2.pt"), "--config",
                 str(REPOSITORY / "experiments" / "voc12.yaml"), *sets]) == 0
    assert load_backbone_init(fresh, tmp_path / "init2.pt") == []
    assert torch.equal(fresh.backbone.aspp.branches[1].bias,
                       model.backbone.aspp.branches[1].bias + 2.0)
    del init["layer3.block1.reduce.conv.weight"]
    with pytest.raises(CheckpointError, match=r"res3\.0\.reduce\.conv\.weight: missing"):
        convert_backbone_init(init, model.backbone.state_dict())


def test_torchvision_trunk_matches_torchvision_up_to_res2():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck,
                                                 [1, 1, 1, 1]).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for name in ("weight", "bias", "running_mean"):
                getattr(module, name).data.uniform_(-0.5, 0.5)
            module.running_var.data.uniform_(0.5, 1.5)
    ours = DeepLabV2(blocks_per_stage=(1, 1, 1, 1), base_width=64, embed_dim=8).eval()
    conversion = convert_backbone_init(reference.state_dict(), ours.state_dict())
    ours.load_state_dict(conversion.state, strict=False)
    rgb = torch.rand(1, 3, 65, 65)  # 65: ceil-mode and floor-mode pooling agree
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    # Our pipeline: BGR 0..255 minus a mean (here torchvision's, so that padding agrees).
    bgr = (rgb * 255 - 255 * mean.view(1, 3, 1, 1)).flip(1)
    with torch.no_grad():
        expected = reference.layer1(reference.maxpool(reference.relu(reference.bn1(
            reference.conv1((rgb - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))))))
        actual = ours.res2(ours.stem(bgr))
    assert torch.allclose(actual, expected, atol=1e-4, rtol=1e-4)
