"""Typed config: recipes, inheritance, overrides, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cagnet.config import Config, config_from_dict, config_to_dict, load_config, save_config
from cagnet.errors import ConfigError

from conftest import REPOSITORY

# Compare recipes (`*_compare.yaml`) name per-method recipes; tests/test_compare.py covers them.
RECIPES = sorted(path for path in (REPOSITORY / "experiments").glob("*.yaml")
                 if not path.stem.endswith(("_compare", "_fewshot")))


def test_defaults_are_the_paper_voc_configuration():
    config = load_config(None)
    assert config.model.blocks_per_stage == [3, 4, 23, 3]
    assert config.loss.kl == 100 and config.loss.generator_content == 50
    assert config.optim.lr_mult_aspp_bias == 20 and config.train.iterations == 40000


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_recipe_loads(recipe: Path):
    config = load_config(recipe)
    assert isinstance(config, Config)


def test_finetune_recipes_carry_the_paper_values():
    voc = load_config(REPOSITORY / "experiments" / "voc12_finetune.yaml")
    assert voc.train.stage == "finetune" and voc.train.iterations == 6000
    assert voc.loss.discriminator_cls_real == 0.75 and voc.loss.discriminator_cls_fake == 0.25
    assert voc.optim.discriminator_lr == 5e-5 and voc.optim.discriminator_decay.gamma == 0.1
    assert voc.data.crop_size == 368  # inherited from voc12.yaml
    coco = load_config(REPOSITORY / "experiments" / "cocostuff_finetune.yaml")
    assert coco.loss.step2_discriminator_cls_fake == 1 and coco.train.gen_unseen_rate == 59
    context = load_config(REPOSITORY / "experiments" / "context_finetune.yaml")
    assert context.train.iterations == 10000 and context.train.gen_unseen_rate == 14


def test_overrides_are_typed():
    config = load_config(None, ["train.iterations=12", "data.mean_bgr=[1, 2, 3]", "optim.backbone_lr=1e-2",
                                "optim.discriminator_decay.gamma=0.5", "model.extra_logit=false"])
    assert config.train.iterations == 12 and config.data.mean_bgr == [1.0, 2.0, 3.0]
    assert config.optim.backbone_lr == 0.01
    assert config.optim.discriminator_decay.gamma == 0.5 and config.model.extra_logit is False


@pytest.mark.parametrize("override, fragment", [
    ("train.iterationz=3", "unknown key train.iterationz"),
    ("nosuch.key=3", "unknown key nosuch"),
    ("train.iterations=abc", "train.iterations: expected int"),
    ("train.iterations=1.5", "train.iterations: expected int"),
    ("optim.backbone_lr=1e-x", "optim.backbone_lr: expected float"),
    ("model.extra_logit=3", "model.extra_logit: expected bool"),
    ("data.mean_bgr=5", "data.mean_bgr: expected a list"),
    ("loss.adversarial=hinge", "loss.adversarial: expected one of l1, lsgan, gan, wgan_gp"),
    ("data.crop_size=2000", "data.crop_size"),
    ("train.batch_size=0", "train.batch_size: expected a positive number"),
    ("train", "expected the form section.key=value"),
])
def test_bad_values_name_the_key(override: str, fragment: str):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_unknown_key_in_file_is_rejected(tmp_path: Path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="unknown key model.widht"):
        load_config(recipe)


def test_inheritance_cycle_and_missing_file(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path: Path):
    config = load_config(None, ["train.iterations=7"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(path) == config
    assert config_from_dict(yaml.safe_load(path.read_text())) == config
    assert config_from_dict(config_to_dict(config), ["train.iterations=9"]).train.iterations == 9
