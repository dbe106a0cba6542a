"""The `cagnet compare` recipe, a small YAML file (not a `Config`): `step1` / `finetune` (CaGNet's
recipes, relative to the file), `shapes_benchmark` / `benchmark_seed` (the shapes benchmark and
pretraining as `cagnet demo` makes them), `calibration_values` (SPNet-c's T grid), `supervised`
(the every-class-seen reference), `overrides` (every stage) and `stages` (per stage a list of
overrides, or `{recipe: other.yaml, overrides: [...]}`); see `ComparePipeline.config`."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from cagnet.errors import ConfigError

# stage -> (base recipe key, what it trains)
STAGES: dict[str, tuple[str, str]] = {
    "cagnet_step1": ("step1", "CaGNet step 1 (shared by CaGNet, ZS3Net and both ST variants)"),
    "cagnet_finetune": ("finetune", "CaGNet mixed finetune from the step-1 checkpoint"),
    "spnet": ("step1", "SPNet, its own backbone from the same init"),
    "spnet_validation": ("step1", "SPNet without the validation classes (chooses T)"),
    "zs3net": ("finetune", "ZS3Net GMMN + classifier on the step-1 features"),
    "cagnet_st_step1": ("step1", "CaGNet + ST: step 1 on pseudo-labels, from CaGNet"),
    "cagnet_st_finetune": ("finetune", "CaGNet + ST: mixed finetune on pseudo-labels"),
    "zs3net_st_step1": ("step1", "ZS3Net + ST: step 1 on pseudo-labels, from ZS3Net"),
    "zs3net_st": ("finetune", "ZS3Net + ST: GMMN + classifier on the new features"),
    "supervised": ("step1", "the reference: CaGNet step 1 with every class seen"),
}
TOP_LEVEL_KEYS = ("step1", "finetune", "shapes_benchmark", "benchmark_seed",
                  "calibration_values", "supervised", "overrides", "stages")


@dataclass
class StageRecipe:
    """A stage's base recipe file and its overrides."""

    recipe: Path
    overrides: list[str] = field(default_factory=list)


@dataclass
class CompareRecipe:
    path: Path
    shapes_benchmark: bool
    benchmark_seed: int
    calibration_values: str
    overrides: list[str]
    stages: dict[str, StageRecipe]
    supervised: bool = False


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}: expected a list of 'section.key=value' strings, got "
                          f"{value!r}")
    return list(value)


def _recipe_file(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a recipe file name, got {value!r}")
    path = base / value  # an absolute `value` replaces `base`
    if not path.is_file():
        raise ConfigError(f"{where}: recipe not found: {path}")
    return path


def _stage(base: Path, name: str, value: Any, default: Path, where: str) -> StageRecipe:
    if value is None or isinstance(value, list):
        return StageRecipe(default, _string_list(value, where))
    if not isinstance(value, dict) or set(value) - {"recipe", "overrides"}:
        raise ConfigError(f"{where}: expected a list of overrides or a mapping with 'recipe' "
                          f"and/or 'overrides', got {value!r}")
    recipe = _recipe_file(base, value["recipe"], f"{where}.recipe") if "recipe" in value \
        else default
    return StageRecipe(recipe, _string_list(value.get("overrides"), f"{where}.overrides"))


def read_mapping(path: Path, keys: Sequence[str], what: str) -> dict:
    """The top-level mapping of a recipe file; errors name the file and any unknown key."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read as YAML ({str(error)[:200]})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(map(str, content)) - set(keys))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(keys)}")
    return content


def read_compare_recipe(path: str | Path) -> CompareRecipe:
    """Read and check a compare recipe; errors name the file and the key."""
    path = Path(path)
    content = read_mapping(path, TOP_LEVEL_KEYS, "compare recipe")
    recipes = {key: _recipe_file(path.parent, content.get(key), f"{path}: {key}")
               for key in ("step1", "finetune")}
    stages_content = content.get("stages") or {}
    if not isinstance(stages_content, dict):
        raise ConfigError(f"{path}: stages: expected a mapping of stage names")
    unknown = sorted(set(map(str, stages_content)) - set(STAGES))
    if unknown:
        raise ConfigError(f"{path}: stages: unknown stage {unknown[0]!r}; valid stages: "
                          f"{', '.join(STAGES)}")
    stages = {name: _stage(path.parent, name, stages_content.get(name), recipes[kind],
                           f"{path}: stages.{name}") for name, (kind, _) in STAGES.items()}
    shapes, seed = content.get("shapes_benchmark", False), content.get("benchmark_seed", 0)
    values = content.get("calibration_values", "0:1:0.05")
    if not isinstance(shapes, bool) or not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"{path}: shapes_benchmark must be true/false and benchmark_seed an "
                          f"integer, got {shapes!r} and {seed!r}")
    if not isinstance(values, str):
        values = ",".join(str(value) for value in values) if isinstance(values, list) else ""
    supervised = content.get("supervised", False)
    if not isinstance(supervised, bool):
        raise ConfigError(f"{path}: supervised must be true/false, got {supervised!r}")
    return CompareRecipe(path, shapes, seed, values,
                         _string_list(content.get("overrides"), f"{path}: overrides"), stages,
                         supervised)
