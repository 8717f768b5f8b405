"""Configs: every shipped recipe loads; typos and bad values are one-line errors naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resnetkit.cli.main import build_parser
from resnetkit.cli.train_cmd import collect_overrides
from resnetkit.config import (
    GROUPS,
    RECIPES,
    TASK_GROUPS,
    ConfigError,
    TrainConfig,
    load_yaml,
    recipe_names,
    settings_of,
)

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


COCO = {"task": "detection", "data": "coco", "data_dir": "somewhere"}


def test_every_field_belongs_to_a_declared_group() -> None:
    groups = {f.name: f.metadata["group"] for f in dataclasses.fields(TrainConfig)}
    assert set(groups.values()) == set(GROUPS), set(groups.values()) ^ set(GROUPS)
    assert TASK_GROUPS["classification"] == set(GROUPS)  # classification uses every setting
    assert {"mixup", "label_smoothing", "ema_decay"} <= set(settings_of("regularisation"))


@pytest.mark.parametrize(
    "setting",
    [
        {"mixup": 0.2},
        {"label_smoothing": 0.1},
        {"ema_decay": 0.99},
        {"teacher": "resnet56.rk_cifar10"},
        {"weights": "w.pt", "finetune": "linear"},  # no fine-tuning strategy in the detector: it trains whole
        {"freeze_bn": True},
        {"sync_bn": True},
        {"dtype": "float64"},
        {"amp": True},
        {"compile": True},
        {"data_mode": "stream"},
        {"val_size": 100},
    ],
    ids=lambda s: ",".join(s),
)
def test_detection_rejects_what_it_would_ignore(setting: dict) -> None:
    name = list(setting)[-1]
    with pytest.raises(ConfigError, match=rf"^--task detection does not use {name}=.*: drop it \(it uses the "):
        TrainConfig.from_dict({**COCO, **setting})


def test_detection_accepts_what_its_loop_and_data_use() -> None:
    """The one training loop gives detection early stopping and mid-epoch checkpoints; --no-amp says what it does."""
    used = {"early_stopping": 2, "checkpoint_every": 3, "workers": 0, "grad_clip": 1.0, "amp": False}
    used |= {"optimizer": "adamw", "warmup_steps": 4, "img_size": 320, "model_kwargs": {"box_batch_size_per_image": 8}}
    cfg = TrainConfig.from_dict({**COCO, **used})
    assert cfg.ignored_by_task() == [] and cfg.early_stopping == 2


def test_flags_are_generated_from_the_declarations() -> None:
    """Every flag of `train` and `finetune` parses into its config field with the field's type; the choices are
    checked by the config (one line), not by argparse."""
    parser = build_parser()
    args = parser.parse_args(
        "train --lr 0.05 --epochs 3 --no-amp --no-progress --compile --sync-bn --data-mode memory --teacher t.pt "
        "--kd-weight 0.5 --img-size 64 --set mixup=0.2".split()
    )
    assert collect_overrides(args) == {
        "lr": 0.05,
        "epochs": 3,
        "amp": False,
        "progress": False,
        "compile": True,
        "sync_bn": True,
        "data_mode": "memory",
        "teacher": "t.pt",
        "kd_weight": 0.5,
        "img_size": 64,
        "mixup": 0.2,
    }
    args = parser.parse_args(
        "finetune --weights w.pt --strategy last --stages 2 --backbone-lr-mult 0.2 --freeze-bn".split()
    )
    assert collect_overrides(args) == {
        "weights": "w.pt",
        "finetune": "last",
        "trainable_stages": 2,
        "backbone_lr_mult": 0.2,
        "freeze_bn": True,
    }
    assert collect_overrides(parser.parse_args(["train"])) == {}  # nothing given: the recipe and defaults apply
    with pytest.raises(SystemExit):
        parser.parse_args("train --strategy last".split())  # fine-tuning flags belong to `finetune`
    with pytest.raises(ConfigError, match="^unknown schedule 'linear'; choose one of paper, cosine, onecycle"):
        TrainConfig.merged(overrides=collect_overrides(parser.parse_args("train --schedule linear".split())))


def test_one_merge_defaults_then_recipe_then_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\nlr: 0.2\nbatch_size: 32\n")
    cfg = TrainConfig.merged(recipe, {"epochs": 1, "lr": 0.01, "weight_decay": 5e-4}, {"lr": 0.05})
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay) == (7, 0.05, 32, 5e-4)
    assert TrainConfig.merged("sample_quick").data == "sample"  # a shipped recipe's name
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in .*r2\.yaml"):
        (tmp_path / "r2.yaml").write_text("epoch: 3\n")
        TrainConfig.merged(tmp_path / "r2.yaml")
