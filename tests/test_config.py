"""Configs: every shipped recipe loads; typos and bad values are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.config import RECIPES, ConfigError, TrainConfig, load_yaml, recipe_names

from conftest import REPO


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path: Path) -> None:
    cfg = TrainConfig.from_dict(load_yaml(path), source=str(path)) if "folder" not in path.read_text() else None
    if cfg is None:  # image-folder recipes need the folder from the command line
        cfg = TrainConfig.from_dict({**load_yaml(path), "data_dir": "somewhere"}, source=str(path))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_configs_folder_is_the_recipes_and_names_resolve() -> None:
    assert sorted(p.stem for p in (REPO / "configs").glob("*.yaml")) == recipe_names()
    assert {"cifar10_paper", "cifar10_fast_cpu", "cats_vs_dogs", "sample_quick"} <= set(recipe_names())
    assert load_yaml("cifar10_paper")["max_steps"] == 64000


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in recipe.yaml; did you mean 'epochs'\?"):
        TrainConfig.from_dict({"epoch": 3}, source="recipe.yaml")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"data": "imagenet"}, "unknown data 'imagenet'; choose one of sample, cifar10"),
        ({"epochs": "ten"}, "epochs in x must be an integer, got 'ten'"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"schedule": "linear"}, "unknown schedule 'linear'"),
        ({"data": "folder"}, "--data folder needs --data-dir"),
        ({"nesterov": "yes"}, "nesterov in x must be true or false"),
        ({"dtype": "float16"}, "unknown dtype 'float16'; choose one of float32, float64"),
        ({"amp": True, "dtype": "float64"}, "--amp computes in bf16/fp16 and cannot be combined with dtype float64"),
    ],
)
def test_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values, source="x")


def test_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML at line"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml .*shipped recipes: "):
        load_yaml(tmp_path / "nope.yaml")
