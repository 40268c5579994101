"""What a training run is asked to do: TrainConfig, the command line of tools/train.py parsed once.

    config = TrainConfig.from_flags(vars(args))   # tools/train.py; args: its parsed flags
    config.schedule.epochs, config.data.num_workers, config.evaluation.policy, ...
    config.as_flags()                             # back to {flag: value}: args.json and last.pt's "args"

The fields are grouped as the flags are (data, model, schedule, speed, run, evaluation, logging), and
each field is named as its flag's argparse dest, so the flat dict a checkpoint stores (and every older
last.pt holds) maps field for field. The recipe flags (training.recipe) are resolved here: the value a
run trains with is in the config, and the line saying how it was chosen is `recipe_line`.
Without PyTorch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from ssdfast.defaults import DETECTION_POLICY, POLICY_NAMES, DetectionPolicy
from ssdfast.training import recipe
from ssdfast.training.checkpoint_schedule import CheckpointSchedule


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are read."""

    data_path: str | None
    data_format: str | None
    data_backend: str
    train_ann: str | None
    train_images: str | None
    val_ann: str | None
    val_images: str | None
    num_workers: int
    max_boxes: int
    max_pixels: int
    max_image_bytes: int
    allow_outside_paths: bool


@dataclass(frozen=True)
class ModelConfig:
    """The detector and where its weights start from."""

    model: str  # canonical (ssdfast.models.canonical_name)
    weights: str | None  # fine-tune from this detector
    backbone_weights: str


@dataclass(frozen=True)
class ScheduleConfig:
    """Optimisation: the recipe's values (training.recipe) and SGD's settings."""

    epochs: int
    batch_size: int  # images per process
    lr: float  # for a global batch of 32
    multistep: tuple[int, ...]  # epochs where the lr drops x0.1
    warmup: int  # iterations
    momentum: float
    no_nesterov: bool
    weight_decay: float
    no_bn_weight_decay: bool
    iters_per_epoch: int | None


@dataclass(frozen=True)
class SpeedConfig:
    """Where the run computes, and in what precision and memory format."""

    device: str | None
    no_cudnn_benchmark: bool
    amp: bool
    amp_dtype: str | None
    channels_last: bool | None  # None: the device's default
    cuda_graphs: bool
    compile: bool
    compile_mode: str
    compile_backend: str


@dataclass(frozen=True)
class RunConfig:
    """The run's folder, seed, checkpoints and resume, and the processes' agreement."""

    save_folder: str
    seed: int
    no_resume: bool
    checkpoint_every: str
    keep_checkpoints: int
    dist_timeout: float
    ignore_category_names: bool
    debug: bool


@dataclass(frozen=True)
class EvalConfig:
    """The per-epoch COCO evaluation."""

    eval_every: int  # 0: never
    eval_batches: int | None
    nms_threshold: float

    @property
    def policy(self) -> DetectionPolicy:
        """The detection policy the evaluation decodes with (the policy flags this tool has)."""
        values = {POLICY_NAMES[name]: getattr(self, name) for name in POLICY_NAMES if hasattr(self, name)}
        return replace(DETECTION_POLICY, **values)


@dataclass(frozen=True)
class LogConfig:
    """Where TensorBoard writes, and how often the loss is read."""

    log_path: str | None
    log_every: int


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "schedule": ScheduleConfig,
    "speed": SpeedConfig,
    "run": RunConfig,
    "evaluation": EvalConfig,
    "logging": LogConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """tools/train.py's command line, checked and resolved (recipe, model name), in typed groups."""

    data: DataConfig
    model: ModelConfig
    schedule: ScheduleConfig
    speed: SpeedConfig
    run: RunConfig
    evaluation: EvalConfig
    logging: LogConfig
    recipe_line: str  # how the schedule's recipe values were chosen (training.recipe.choose)

    @classmethod
    def from_flags(cls, flags: dict) -> TrainConfig:
        """The config of a flag dict {argparse dest: value} (recipe flags None where not given).
        ValueError for flag combinations no parser type catches (the run has done no work yet)."""
        expected = {f.name for group in GROUPS.values() for f in fields(group)}
        if set(flags) != expected:  # a flag without a field (or the reverse) would be dropped silently
            raise ValueError(f"TrainConfig does not match the flags: {sorted(set(flags) ^ expected)}")
        values, line = recipe.choose({name: flags[name] for name in recipe.RECIPE_FLAGS}, flags["weights"] is not None)
        flags = {**flags, **values, "model": canonical_model(flags["model"])}
        groups = {name: group(**{f.name: flags[f.name] for f in fields(group)}) for name, group in GROUPS.items()}
        config = cls(**groups, recipe_line=line)
        config.check()
        return config

    def check(self) -> None:
        speed = self.speed
        if speed.compile and speed.cuda_graphs:  # a compiled region inside the step's own capture: not tried
            raise ValueError(
                "--compile and --cuda-graphs exclude each other: --compile-mode reduce-overhead replays the "
                "compiled forward and backward from CUDA graphs"
            )
        if self.run.keep_checkpoints < 0:
            raise ValueError(f"--keep-checkpoints must be >= 0, got {self.run.keep_checkpoints}")
        CheckpointSchedule(self.run.checkpoint_every)  # ValueError for a spec it cannot read

    def as_flags(self) -> dict:
        """{argparse dest: value}, as args.json and last.pt store them (lists where argparse gives lists)."""
        flat = {}
        for name in GROUPS:
            flat.update(asdict(getattr(self, name)))
        return {key: list(value) if isinstance(value, tuple) else value for key, value in flat.items()}

    @property
    def save_folder(self) -> Path:
        return Path(self.run.save_folder)

    @property
    def tensorboard_folder(self) -> Path:
        return Path(self.logging.log_path) if self.logging.log_path else self.save_folder / "tensorboard"


def canonical_model(name: str) -> str:
    """The model's full name ('ssd' -> 'ssd300_resnet50'): checkpoints and args.json store it."""
    from ssdfast.models import canonical_name  # PyTorch: imported when a config is built, not at --help

    return canonical_name(name)
