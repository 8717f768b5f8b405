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
# the fields a detection run would silently ignore (classification's data pipeline, regularisers, distillation,
# EMA, precision and compile choices): set to anything but their default, they are a one-line error
DETECTION_IGNORES = frozenset(
    {
        "backbone_lr_mult",
        "freeze_bn",
        "teacher",
        "kd_temperature",
        "kd_weight",
        "download",
        "train_img_size",
        "eval_resize",
        "val_size",
        "val_fraction",
        "augment",
        "rrc_scale",
        "cutout",
        "augment_policy",
        "random_erasing",
        "data_mode",
        "memory_budget_gb",
        "mixup",
        "cutmix",
        "label_smoothing",
        "ema_decay",
        "ema_every",
        "amp_dtype",
        "compile",
        "early_stopping",
        "checkpoint_every",
        "strict",
    }
)
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


class ConfigError(ResnetkitError):
    """A recipe or flag that names an unknown key or an impossible value."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved beside the run as config.yaml and inside checkpoints."""

    # model
    task: str = "classification"  # or "detection": `model` is the backbone of `detector`, data is COCO-format
    detector: str = "fasterrcnn"
    model: str = "resnet20"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # fine-tuning: a registered name, a file or a URL (the head is replaced)
    finetune: str = "full"  # full | linear (frozen backbone) | last (the last `trainable_stages` stages)
    trainable_stages: int = 1
    backbone_lr_mult: float = 1.0  # full fine-tuning: the backbone's lr is lr x this
    freeze_bn: bool = False  # keep the pretrained BatchNorm statistics (frozen layers always keep theirs)
    # knowledge distillation: a teacher (checkpoint, run folder or registered weights) and Hinton's soft targets
    teacher: str | None = None
    kd_temperature: float = 4.0
    kd_weight: float = 0.9  # loss = (1 - kd_weight) x cross-entropy + kd_weight x T^2 x KL(teacher || student)
    # data
    data: str = "sample"
    data_dir: str | None = None
    download: bool = False
    img_size: int | None = None  # None: the model's default input size (the evaluation input)
    train_img_size: int | None = None  # FixRes: training crops of this side (torchvision's V2 recipe: 176 for 224)
    eval_resize: int | None = None  # evaluation: short side resized to this, then center crop img_size (232 -> 224)
    val_size: int = 0  # images held out of the training set for validation (5000 = the paper's 45k/5k split)
    val_fraction: float = 0.1  # image folders without a val/ folder
    train_subset: int | None = None
    test_subset: int | None = None  # images of the held-out set evaluated each epoch (a fixed draw); None: all
    augment: str = "auto"
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    cutout: int = 0
    augment_policy: str = "none"  # streamed folders: none | trivial (TrivialAugment) | rand (RandAugment) | auto
    random_erasing: float = 0.0  # streamed folders: probability of erasing a random rectangle (Zhong et al.)
    # image folders: "memory" decodes once into RAM; "stream" reads from disk each epoch (DataLoader workers);
    # "auto" streams when the decoded images would need more than memory_budget_gb
    data_mode: str = "auto"
    memory_budget_gb: float = 4.0
    workers: int | None = None  # streaming's decoding processes (None: the CPU count, at most 8; 0: in-process)
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    # optimisation
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw (momentum is AdamW's beta1)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_bn_bias: bool = False
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # "paper": fractions of all steps (32k and 48k of 64k)
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_constant_factor: float | None = None  # the paper's ResNet-110 warm-up: 0.1 x lr, then the full lr
    grad_clip: float | None = None
    ema_decay: float = 0.0  # weight EMA per update (0: off); evaluated, checkpointed, used by eval/predict/export
    ema_every: int = 1  # optimisation steps between EMA updates
    amp: bool | None = None  # bf16/fp16 autocast; None: bf16 on a CPU where it measured faster (engine.device)
    amp_dtype: str = "auto"  # auto: bf16 where the device has it, else fp16 (with a loss scaler); or bfloat16/float16
    dtype: str = "float32"  # of the weights and batches; float64 checks numerics (N processes = 1 process), slowly
    compile: bool | None = None  # torch.compile the training step; None: on CUDA for long runs (slower on CPU here)
    early_stopping: int = 0  # patience in evaluations without a better validation top-1 (0: off)
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    out: str | None = None
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: epoch ends only)
    # distributed (torchrun): batch_size is the global batch, split evenly over the processes
    sync_bn: bool = False  # BatchNorm statistics over the global batch (SyncBatchNorm) instead of each process's
    dist_timeout: float = 300.0  # seconds to join the process group / wait in one collective before failing
    progress: bool = True
    strict: bool = False  # image folders: unreadable files are errors, not warnings

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("data", self.data, DATA_CHOICES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTS)
        _choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("data_mode", self.data_mode, DATA_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("augment_policy", self.augment_policy, AUGMENT_POLICIES)
        _choice("task", self.task, TASKS)
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
        _choice("finetune", self.finetune, FINETUNE_STRATEGIES)
        if self.finetune != "full" and not self.weights:
            raise ConfigError(f"--strategy {self.finetune} needs --weights (what would stay frozen is random)")
        if self.kd_temperature <= 0 or not 0.0 <= self.kd_weight <= 1.0:
            raise ConfigError(
                f"kd_temperature must be positive and kd_weight in [0, 1], got {self.kd_temperature}, {self.kd_weight}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def _validate_task(self) -> None:
        if self.task == "detection":
            _choice("detector", self.detector, TRAINABLE_DETECTORS)
            if self.data != "coco" or not self.data_dir:
                raise ConfigError("--task detection trains on COCO-format data: --data coco --data-dir DIR")
            defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in DETECTION_IGNORES}
            changed = [name for name, default in defaults.items() if getattr(self, name) != default]
            if self.amp:  # --no-amp says what detection does
                changed.insert(0, "amp")
            if changed:
                shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in changed)
                them = "them" if len(changed) > 1 else "it"
                why = "detection trains in float32 with its own augmentation"
                raise ConfigError(f"--task detection does not use {shown}: drop {them} ({why})")
        elif self.data == "coco":
            raise ConfigError("--data coco holds boxes: train a detector on it with --task detection")

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
