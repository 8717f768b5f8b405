"""Typed run configuration: the single source. YAML recipes and CLI flags are views of `TrainConfig`."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from resnetkit.errors import ResnetkitError

DATA_CHOICES = ("sample", "cifar10", "cifar100", "folder", "coco")
TASKS = ("classification", "detection")
# detectors `train --task detection` fine-tunes (boxes only: no masks or keypoints in the COCO reader yet)
TRAINABLE_DETECTORS = ("fasterrcnn", "fasterrcnn_v2", "retinanet", "retinanet_v2")
SCHEDULES = ("paper", "cosine", "onecycle", "constant")
OPTIMIZERS = ("sgd", "adamw")  # adamw: momentum is its beta1
AUGMENTS = ("auto", "cifar", "imagenet", "none")
FINETUNE_STRATEGIES = ("full", "linear", "last")
AMP_DTYPES = ("auto", "bfloat16", "float16")
DTYPES = ("float32", "float64")
DATA_MODES = ("auto", "memory", "stream")
AUGMENT_POLICIES = ("none", "trivial", "rand", "auto")

# TrainConfig's fields by concern. Each task declares the groups it uses; a field of another group set to anything
# but its default is a one-line error for that task (it would be ignored).
GROUPS = {
    "model": "the network (for detection: the backbone and detector) and the weights it starts from",
    "finetune": "how pretrained weights are fine-tuned (strategy, backbone lr)",
    "distillation": "a teacher's soft targets (Hinton et al.)",
    "data": "which images, how many, how large, how many decoding processes",
    "image_data": "classification's image pipeline: download, held-out split, memory or streaming, FixRes",
    "regularisation": "augmentation, mixing, label smoothing, weight EMA",
    "normalisation": "BatchNorm statistics: frozen, or synchronised over processes",
    "optimisation": "optimiser, schedule, epochs and steps, early stopping",
    "precision": "autocast, weight dtype, torch.compile",
    "run": "seed, device, threads, run folder, checkpoints, progress, torchrun's timeout",
}
TASK_GROUPS = {
    "classification": frozenset(GROUPS),
    "detection": frozenset({"model", "data", "optimisation", "run"}),
}
# what a task does itself, accepted though its group is unused: detection trains in float32 (--no-amp says so)
TASK_ACCEPTS: dict[str, dict[str, Any]] = {"detection": {"amp": False}}


def _setting(
    default: Any = None,
    *,
    group: str,
    help: str = "",
    flag: bool | str = False,
    no_flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    scope: str = "run",
    factory: Any = None,
) -> Any:
    """A TrainConfig field with its one declaration: its group, its help, its choices (checked by `validate`) and
    its CLI flags (`flag`: True for --the-name, or the flag's own name; `no_flag` sets a bool False). `scope`: the
    commands that take the flag ("run": train, finetune, distill and prune; "finetune": finetune only)."""
    meta = {"group": group, "help": help, "flag": flag, "no_flag": no_flag, "choices": choices, "scope": scope}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class ConfigError(ResnetkitError):
    """A recipe or flag that names an unknown key or an impossible value."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved beside the run as config.yaml and inside checkpoints. Flat on
    disk (recipes and checkpoints name fields directly); grouped by concern in each field's declaration."""

    # model
    task: str = _setting(
        "classification",
        group="model",
        flag=True,
        choices=TASKS,
        help="classification, or detection: `model` is the backbone of `detector`, data COCO-format",
    )
    detector: str = _setting(
        "fasterrcnn",
        group="model",
        flag=True,
        choices=TRAINABLE_DETECTORS,
        help="--task detection: the torchvision detector",
    )
    model: str = _setting("resnet20", group="model", flag=True, help="a registered architecture (resnetkit models)")
    model_kwargs: dict[str, Any] = _setting(group="model", factory=dict, help="keyword arguments of the model")
    weights: str | None = _setting(group="model", help="start from these weights (registered name, file or URL)")
    # fine-tuning (the head is replaced)
    finetune: str = _setting(
        "full",
        group="finetune",
        flag="--strategy",
        choices=FINETUNE_STRATEGIES,
        scope="finetune",
        help="full (lower backbone lr), linear (frozen backbone), last (last N stages)",
    )
    trainable_stages: int = _setting(
        1, group="finetune", flag="--stages", scope="finetune", help="N for --strategy last"
    )
    backbone_lr_mult: float = _setting(
        1.0, group="finetune", flag=True, scope="finetune", help="full fine-tuning: the backbone's lr is lr x this"
    )
    # knowledge distillation: a teacher (checkpoint, run folder or registered weights) and Hinton's soft targets
    teacher: str | None = _setting(
        group="distillation",
        flag=True,
        help="checkpoint, run folder or registered weights whose soft targets join the loss",
    )
    kd_temperature: float = _setting(4.0, group="distillation", flag=True, help="softmax temperature T")
    kd_weight: float = _setting(
        0.9, group="distillation", flag=True, help="loss = (1 - w) x cross-entropy + w x T^2 x KL(teacher || student)"
    )
    # data
    data: str = _setting("sample", group="data", flag=True, choices=DATA_CHOICES, help="the dataset")
    data_dir: str | None = _setting(group="data", flag=True, help="where the dataset's files are")
    img_size: int | None = _setting(
        group="data", flag=True, help="input side (default: the model's evaluation input; detection: 800)"
    )
    train_subset: int | None = _setting(group="data", flag=True, help="train on the first N images")
    test_subset: int | None = _setting(
        group="data", flag=True, help="images of the held-out set evaluated each epoch (a fixed draw; default all)"
    )
    workers: int | None = _setting(
        group="data", flag=True, help="decoding processes (default: the CPU count, at most 8; 0: in-process)"
    )
    download: bool = _setting(False, group="image_data", flag=True, help="fetch CIFAR if the folder is empty")
    train_img_size: int | None = _setting(
        group="image_data", help="FixRes: training crops of this side (torchvision's V2 recipe: 176 for 224)"
    )
    eval_resize: int | None = _setting(
        group="image_data", help="evaluation: short side resized to this, then center crop img_size (232 -> 224)"
    )
    val_size: int = _setting(
        0,
        group="image_data",
        flag=True,
        help="images held out of the training set for validation (5000: the paper's 45k/5k)",
    )
    val_fraction: float = _setting(0.1, group="image_data", help="image folders without a val/ folder")
    data_mode: str = _setting(
        "auto",
        group="image_data",
        flag=True,
        choices=DATA_MODES,
        help="image folders: memory (decode once) or stream (read each epoch); "
        "auto: stream when the decoded images would exceed memory_budget_gb",
    )
    memory_budget_gb: float = _setting(4.0, group="image_data", help="data_mode auto's limit")
    strict: bool = _setting(False, group="image_data", flag=True, help="unreadable images are errors, not warnings")
    exclude: str | None = _setting(
        group="image_data",
        flag=True,
        help="leave out the training images this file lists: an audit CSV (label_issues.csv, duplicates_*.csv, "
        "odd_files.csv) or one CIFAR index / folder path (relative to --data-dir) per line",
    )
    # regularisation
    augment: str = _setting(
        "auto",
        group="regularisation",
        choices=AUGMENTS,
        help="training augmentation; auto: the model's preset (cifar: pad-crop-flip, imagenet: RRC)",
    )
    rrc_scale: tuple[float, float] = _setting(
        (0.08, 1.0), group="regularisation", help="RandomResizedCrop's area range"
    )
    cutout: int = _setting(0, group="regularisation", help="side of the square Cutout erases (0: off)")
    augment_policy: str = _setting(
        "none",
        group="regularisation",
        choices=AUGMENT_POLICIES,
        help="streamed folders: trivial (TrivialAugment), rand (RandAugment) or auto",
    )
    random_erasing: float = _setting(
        0.0, group="regularisation", help="streamed folders: probability of erasing a random rectangle (Zhong et al.)"
    )
    mixup: float = _setting(0.0, group="regularisation", help="mixup's Beta alpha (0: off)")
    cutmix: float = _setting(0.0, group="regularisation", help="CutMix's Beta alpha (0: off)")
    label_smoothing: float = _setting(0.0, group="regularisation", flag=True, help="cross-entropy label smoothing")
    ema_decay: float = _setting(
        0.0, group="regularisation", help="weight EMA per update (0: off); evaluated, checkpointed, used by eval/export"
    )
    ema_every: int = _setting(1, group="regularisation", help="optimisation steps between EMA updates")
    freeze_bn: bool = _setting(
        False,
        group="normalisation",
        flag=True,
        scope="finetune",
        help="keep the pretrained BatchNorm statistics (frozen layers always keep theirs)",
    )
    sync_bn: bool = _setting(
        False,
        group="normalisation",
        flag=True,
        help="torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)",
    )
    # optimisation
    epochs: int = _setting(10, group="optimisation", flag=True)
    max_steps: int | None = _setting(group="optimisation", flag=True, help="stop after this many steps")
    batch_size: int = _setting(128, group="optimisation", flag=True, help="the global batch (torchrun: split evenly)")
    optimizer: str = _setting("sgd", group="optimisation", choices=OPTIMIZERS, help="adamw: momentum is its beta1")
    lr: float = _setting(0.1, group="optimisation", flag=True)
    momentum: float = _setting(0.9, group="optimisation")
    nesterov: bool = _setting(False, group="optimisation")
    weight_decay: float = _setting(1e-4, group="optimisation", flag=True)
    no_decay_bn_bias: bool = _setting(False, group="optimisation", help="no weight decay on BatchNorm and biases")
    schedule: str = _setting(
        "cosine", group="optimisation", flag=True, choices=SCHEDULES, help="paper: x0.1 at the milestones"
    )
    milestones: tuple[float, ...] = _setting(
        (0.5, 0.75), group="optimisation", help='"paper": fractions of all steps (32k and 48k of 64k)'
    )
    warmup_steps: int = _setting(0, group="optimisation")
    warmup_epochs: float = _setting(0.0, group="optimisation")
    warmup_constant_factor: float | None = _setting(
        group="optimisation", help="the paper's ResNet-110 warm-up: 0.1 x lr, then the full lr"
    )
    grad_clip: float | None = _setting(group="optimisation", help="clip the gradients' norm to this")
    early_stopping: int = _setting(
        0, group="optimisation", flag=True, help="patience in evaluations without a better validation score (0: off)"
    )
    # precision
    amp: bool | None = _setting(
        group="precision",
        flag=True,
        no_flag="--no-amp",
        help="bf16/fp16 autocast (default: bf16 on a CPU where it measured faster than fp32)",
    )
    amp_dtype: str = _setting(
        "auto",
        group="precision",
        flag=True,
        choices=AMP_DTYPES,
        help="auto: bf16 where the device has it, else fp16 (with a loss scaler)",
    )
    dtype: str = _setting(
        "float32",
        group="precision",
        choices=DTYPES,
        help="of the weights and batches; float64 checks numerics (N processes = 1), slowly",
    )
    compile: bool | None = _setting(
        group="precision",
        flag=True,
        no_flag="--no-compile",
        help="torch.compile the training step (default: on CUDA for long runs)",
    )
    # run
    seed: int = _setting(0, group="run", flag=True)
    device: str = _setting("auto", group="run", flag=True, help="cpu, cuda, cuda:N; auto: CUDA when present")
    threads: int | None = _setting(group="run", flag=True, help="torch's CPU threads")
    out: str | None = _setting(group="run", flag=True, help="the run folder (default: runs/<model>-<data>-<time>)")
    checkpoint_every: int = _setting(
        0, group="run", flag=True, help="steps between mid-epoch checkpoints (0: epoch ends only)"
    )
    dist_timeout: float = _setting(
        300.0, group="run", help="seconds to join the process group / wait in one collective before failing"
    )
    progress: bool = _setting(True, group="run", no_flag="--no-progress", help="progress bars")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            if f.metadata["choices"]:
                _choice(f.name, getattr(self, f.name), f.metadata["choices"])
        self._validate_task()
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be 0 (decode in the training process) or more, got {self.workers}")
        if not 0.0 <= self.ema_decay < 1.0 or self.ema_every < 1:
            raise ConfigError(
                f"ema_decay must be in [0, 1) and ema_every at least 1, got {self.ema_decay}, {self.ema_every}"
            )
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ConfigError(f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.amp and self.dtype != "float32":
            raise ConfigError(f"--amp computes in bf16/fp16 and cannot be combined with dtype {self.dtype}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (all images) or more, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.dist_timeout <= 0:
            raise ConfigError(f"dist_timeout must be positive seconds, got {self.dist_timeout}")
        if self.data == "folder" and not self.data_dir:
            raise ConfigError("--data folder needs --data-dir (a folder with train/ and val/, or class folders)")
        if self.finetune != "full" and not self.weights:
            raise ConfigError(f"--strategy {self.finetune} needs --weights (what would stay frozen is random)")
        if self.kd_temperature <= 0 or not 0.0 <= self.kd_weight <= 1.0:
            raise ConfigError(
                f"kd_temperature must be positive and kd_weight in [0, 1], got {self.kd_temperature}, {self.kd_weight}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def _validate_task(self) -> None:
        if self.task == "detection" and (self.data != "coco" or not self.data_dir):
            raise ConfigError("--task detection trains on COCO-format data: --data coco --data-dir DIR")
        if self.task != "detection" and self.data == "coco":
            raise ConfigError("--data coco holds boxes: train a detector on it with --task detection")
        ignored = self.ignored_by_task()
        if ignored:
            shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in ignored)
            groups = ", ".join(sorted(TASK_GROUPS[self.task]))
            them = "them" if len(ignored) > 1 else "it"
            raise ConfigError(f"--task {self.task} does not use {shown}: drop {them} (it uses the {groups} settings)")

    def ignored_by_task(self) -> list[str]:
        """The fields set to anything but their default that the task does not use (their group is not its)."""
        used, accepts = TASK_GROUPS[self.task], TASK_ACCEPTS.get(self.task, {})
        return [
            f.name
            for f in fields(self)
            if f.metadata["group"] not in used
            and getattr(self, f.name) != _default(f)
            and (f.name not in accepts or getattr(self, f.name) != accepts[f.name])
        ]

    @classmethod
    def merged(
        cls,
        recipe: str | Path | None = None,
        defaults: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> TrainConfig:
        """The one merge every training command makes, later sources winning: the command's own defaults, the YAML
        recipe (a file or a shipped recipe's name), then the flags and --set pairs."""
        values = {**(defaults or {}), **(load_yaml(recipe) if recipe else {}), **(overrides or {})}
        return cls.from_dict(values, source=str(recipe) if recipe else "flags")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from plain values; an unknown key is an error that names it and suggests the closest."""
        known = {f.name: f for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown key {key!r} in {source}{hint}")
        cleaned = {k: _coerce(known[k], v, source) for k, v in values.items()}
        try:
            return cls(**cleaned)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain types (lists for tuples), for YAML, JSON and checkpoints."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def settings_of(group: str) -> list[str]:
    """The TrainConfig fields of one group (GROUPS)."""
    return [f.name for f in fields(TrainConfig) if f.metadata["group"] == group]


def flag_settings(scope: str) -> list[dataclasses.Field[Any]]:
    """The TrainConfig fields that have CLI flags in `scope` ("run" or "finetune"), in declaration order."""
    return [
        f for f in fields(TrainConfig) if f.metadata["scope"] == scope and (f.metadata["flag"] or f.metadata["no_flag"])
    ]


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _coerce(f: dataclasses.Field[Any], value: Any, source: str) -> Any:
    """YAML gives lists where the config holds tuples, ints where it holds floats; anything else must match."""
    kind = str(f.type)
    if kind.startswith("tuple") and isinstance(value, list):
        return tuple(value)
    if kind.startswith("float") and value is not None:
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value) if not isinstance(value, bool) else _bad(f, value, source, "a number")
        except (TypeError, ValueError):
            _bad(f, value, source, "a number")
    if kind.startswith("int") and value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        _bad(f, value, source, "an integer")
    if kind.startswith("bool") and not isinstance(value, bool) and not (value is None and "None" in kind):
        _bad(f, value, source, "true or false" + (" (or null: the default)" if "None" in kind else ""))
    return value


def _bad(f: dataclasses.Field[Any], value: Any, source: str, what: str) -> Any:
    raise ConfigError(f"{f.name} in {source} must be {what}, got {value!r}")


RECIPES = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    """The recipes shipped with the package (also reachable as configs/NAME.yaml in the repository)."""
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file, or the name of a shipped recipe, as a dict; one-line ConfigErrors for missing or bad YAML."""
    import yaml

    path = Path(path)
    if not path.is_file() and (RECIPES / f"{path.name}.yaml").is_file() and path.suffix == "":
        path = RECIPES / f"{path.name}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (shipped recipes: {', '.join(recipe_names())})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return values


def dump_yaml(values: dict[str, Any], path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))
