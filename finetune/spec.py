"""The training contract, written once: every setting ``python -m finetune.train`` takes.

Each section is a dataclass whose fields carry their default, their legal values (a :class:`Range` or a set
of choices) and whether a sweep may search them. Everything else reads these fields instead of listing them
again: the config schema (``ModelConfig`` is :class:`Hyperparameters` plus where the model is, ``TrainConfig``
is :class:`TrainingOptions`, ``ComputeConfig`` starts with :class:`SpeedOptions`), the plan-time value checks
(:mod:`finetune.ranges`), the searchable names and their legal values (:mod:`finetune.search.space`), the
training command line (:func:`to_argv` / :func:`parse_args`), the AML command's ``${{inputs.<name>}}``
placeholders and the table in docs/contracts.md (``tests/test_spec.py`` holds it to this module).

Adding a hyperparameter is one field of :class:`Hyperparameters`: with ``trainer=`` when ``TrainingArguments``
takes it as it is, otherwise plus the lines of :mod:`finetune.train` that use it (then regenerate the docs
table and the AML goldens: ``FINETUNE_UPDATE_DOCS=1 FINETUNE_UPDATE_GOLDEN=1 pytest tests/test_spec.py
tests/test_azureml_entities.py``).

Standard library only: the CLI, the plan check and an AML job's code snapshot all import it.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

TASKS = ("single_label", "multi_label")
# numpy's RandomState (data split, transformers.set_seed, optuna samplers) takes seeds in 0..2**32-1.
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Range:
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    unit: str = ""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}{self.unit}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}{self.unit}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}{self.unit}"
        return "a finite number"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


POSITIVE = Range(0, low_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
FRACTION_OPEN = Range(0, 1, low_open=True, high_open=True)
BETA = Range(0, 1, high_open=True)
SEED = Range(0, SEED_MAX)
SECONDS = Range(1, unit=" seconds")


def setting(default: Any, legal: Optional[Range] = None, choices: Optional[Sequence[str]] = None,
            searchable: bool = False, trainer: Optional[str] = None) -> Any:
    """A field with its legal values (checked at plan time; a list's are its items'), whether it is searched,
    and the ``TrainingArguments`` field it is handed to unchanged (when it is)."""
    metadata = {"range": legal, "choices": tuple(choices) if choices else None, "searchable": searchable,
                "trainer": trainer}
    if isinstance(default, list):
        # Each instance gets its own copy: dataclasses refuse a shared mutable default.
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def hyperparameter(default: Any, legal: Range, trainer: Optional[str] = None) -> Any:
    return setting(default, legal, searchable=True, trainer=trainer)


# ------------------------------------------------------------------------------------------------ sections


@dataclass
class Hyperparameters:
    """What a training learns with: ``model.<name>`` settings, searchable as ``search.space.<name>``."""

    # The model's reference learning rate and batch size: finetune.speed scales both to the hardware.
    learning_rate: float = hyperparameter(5e-5, POSITIVE)
    batch_size: int = hyperparameter(16, AT_LEAST_1)
    epochs: float = hyperparameter(2.0, POSITIVE, trainer="num_train_epochs")
    max_length: int = hyperparameter(128, Range(2))  # tokens; [CLS] and [SEP] alone take two positions
    # A float below 1 is a fraction of the total steps (transformers 5 folded warmup_ratio into warmup_steps).
    warmup_ratio: float = hyperparameter(0.0, BETA, trainer="warmup_steps")
    weight_decay: float = hyperparameter(0.0, NON_NEGATIVE, trainer="weight_decay")
    adam_beta1: float = hyperparameter(0.9, BETA, trainer="adam_beta1")
    adam_beta2: float = hyperparameter(0.999, BETA, trainer="adam_beta2")
    adam_epsilon: float = hyperparameter(1e-8, POSITIVE, trainer="adam_epsilon")
    gradient_accumulation_steps: int = hyperparameter(1, AT_LEAST_1, trainer="gradient_accumulation_steps")


# Per-class loss weights: see finetune.losses.class_weights.
CLASS_WEIGHTS = ("auto", "balanced", "none")
# What training does when it is clearly not learning: finetune.learning_check.
LEARNING_CHECK = ("restart", "warn")


@dataclass
class TrainingOptions:
    """How a training evaluates, stops and checkpoints: the ``train.<name>`` settings."""

    evals_per_epoch: int = setting(1, AT_LEAST_1)
    # auto (= balanced, measured best for classes and labels) | balanced | none: finetune.losses.class_weights.
    class_weights: str = setting("auto", choices=CLASS_WEIGHTS)
    # Evaluations without a better primary val metric before a run stops; None = 2 for a single run and off in
    # sweeps (the sweep's policy stops trials there; the plan resolves it), 0 = never.
    early_stopping_patience: Optional[int] = setting(None, NON_NEGATIVE)
    checkpoint_every_steps: int = setting(0, NON_NEGATIVE)  # 0 = at every evaluation; N = also every N steps
    # When the model is clearly not learning (finetune.learning_check): restart once at a quarter of the learning
    # rate, then stop | warn (record and say so only); None = restart for a single run, warn in sweeps (the plan
    # resolves it: a sweep's early-termination policy decides about its trials); warn for a bare finetune.train.
    learning_check: Optional[str] = setting(None, choices=LEARNING_CHECK)
    telemetry_interval_s: float = setting(5.0, POSITIVE)
    logging_steps: int = setting(10, AT_LEAST_1)


@dataclass
class SpeedOptions:
    """Hardware switches of one training process, decided per device by :mod:`finetune.speed`: ``compute.<name>``."""

    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    num_threads: int = setting(0, NON_NEGATIVE)  # CPU threads for training; 0 = the cores actually free
    precision: str = setting("auto", choices=("auto", "fp32", "bf16", "fp16"))
    # auto: a per-card table in finetune.speed.
    torch_compile: str = setting("auto", choices=("auto", "on", "off"))
    group_by_length: bool = setting(True)
    pad_to_multiple_of: int = setting(0, NON_NEGATIVE)  # 0 = auto (64 with torch.compile on GPU, 8 on GPU, none on CPU)
    dataloader_workers: int = setting(-1, Range(-1))  # -1 = auto (2 per process on GPU, 0 on CPU)
    tf32: bool = setting(True)  # TF32 matmuls on sm80+ GPUs
    optim: str = setting("auto")  # a Trainer optimizer name; auto = adamw_torch_fused
    attn_implementation: str = setting("sdpa", choices=("sdpa", "eager", "flash_attention_2", "auto"))
    # GPU: the largest batch that fits (power of two, <= max_batch_size, >= 50 steps per epoch), the learning
    # rate scaled from model.batch_size by lr_scaling; CPU: model.batch_size. See finetune.speed.
    auto_batch_size: bool = setting(True)
    max_batch_size: int = setting(128, AT_LEAST_1)
    lr_scaling: str = setting("sqrt", choices=("sqrt", "linear", "none"))


@dataclass
class Inputs:
    """What one training reads and where it writes (docs/contracts.md, "Training entry point")."""

    train_file: str
    val_file: str
    labels_file: str
    model: str  # a Hugging Face model folder or hub id
    output_dir: str
    seed: int = setting(0, SEED)
    # multi_label: a sigmoid per label with binary cross-entropy, split cells are label lists (docs/contracts.md).
    task: str = setting("single_label", choices=TASKS)


@dataclass
class Objective:
    """The metric training keeps its best evaluation by, and the sweep trial it reports that metric to."""

    primary_metric: str = "val_auc_weighted"
    goal: str = "maximize"
    trial_storage: Optional[str] = None
    study_name: Optional[str] = None
    trial_number: Optional[int] = None


@dataclass
class Reporting:
    """Where metrics and progress go."""

    tracking_uri: Optional[str] = None  # None: MLflow's environment (on AML, the workspace)
    experiment: str = "finetune"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # nest the MLflow run under this one (the pipeline run)
    tags: Optional[str] = None  # a JSON object of MLflow tags for the run
    model_id: Optional[str] = None  # the base model as logged (hub id or name); default --model
    progress: bool = True
    progress_file: Optional[str] = None  # a sweep trial's progress (step, total, latest metrics) as JSON


# The bases in reverse: dataclasses collect fields from the last base first, so the required inputs lead.
@dataclass
class TrainArgs(Reporting, Objective, SpeedOptions, TrainingOptions, Hyperparameters, Inputs):
    """Every argument of ``python -m finetune.train``, one flag per field (``--learning-rate``)."""


SECTIONS = (Inputs, Hyperparameters, TrainingOptions, SpeedOptions, Objective, Reporting)


# ------------------------------------------------------------------------------------------- reading it


def searchable() -> Tuple[str, ...]:
    """Names a sweep may search (``model`` aside, which chooses a model config)."""
    return tuple(item.name for item in dataclasses.fields(Hyperparameters) if item.metadata.get("searchable"))


def is_integer(cls: type, name: str) -> bool:
    return _inner_type(typing.get_type_hints(cls)[name]) is int


def legal_range(cls: type, name: str) -> Optional[Range]:
    return next(item.metadata.get("range") for item in dataclasses.fields(cls) if item.name == name)


def trainer_arguments(args: TrainArgs) -> Dict[str, Any]:
    """The hyperparameters ``TrainingArguments`` takes as they are, under its names."""
    return {item.metadata["trainer"]: getattr(args, item.name) for item in dataclasses.fields(Hyperparameters)
            if item.metadata.get("trainer")}


def logged_parameters(args: TrainArgs) -> dict:
    """What result.json and the MLflow run record as a training's hyperparameters: every one of
    :class:`Hyperparameters`, the seed, and the loss and stopping settings."""
    names = [item.name for item in dataclasses.fields(Hyperparameters)] + ["seed", "class_weights",
                                                                          "early_stopping_patience", "learning_check"]
    return {name: getattr(args, name) for name in names}


def _inner_type(kind: Any) -> Any:
    """``int`` for ``Optional[int]``."""
    if typing.get_origin(kind) is typing.Union:
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def reference_table() -> str:
    """Every training argument as a Markdown table: the block of docs/contracts.md between its ``spec`` markers
    (``tests/test_spec.py`` holds the two equal; ``FINETUNE_UPDATE_DOCS=1`` rewrites the block)."""
    rows = ["| flag | section | default | legal values | searchable |", "|---|---|---|---|---|"]
    for section in SECTIONS:
        for item in dataclasses.fields(section):
            legal = item.metadata.get("range")
            choices = item.metadata.get("choices")
            allowed = legal.describe() if legal else " \\| ".join(choices) if choices else ""
            default = "required" if item.default is dataclasses.MISSING else f"`{item.default}`"
            rows.append(f"| `{flag(item.name)}` | {section.__name__} | {default} | {allowed} | "
                        f"{'yes' if item.metadata.get('searchable') else ''} |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------------------- command line


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def to_argv(args: TrainArgs) -> List[str]:
    """The command line of ``args``: every field that is set, in section order (``parse_args`` reads it back).

    A value may be a placeholder string (an AML ``${{inputs.<name>}}``): it is passed through as it is.
    """
    argv: List[str] = []
    for item in dataclasses.fields(args):
        value = getattr(args, item.name)
        if value is None:
            continue
        argv += [flag(item.name), str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.train",
        description="Fine-tune a Hugging Face encoder as a text classifier on prepared split files.",
    )
    hints = typing.get_type_hints(TrainArgs)
    for item in dataclasses.fields(TrainArgs):
        kind = _inner_type(hints[item.name])
        extra: Dict[str, Any] = {}
        if item.metadata.get("choices"):
            extra["choices"] = item.metadata["choices"]
        if item.default is dataclasses.MISSING:
            parser.add_argument(flag(item.name), required=True)
        elif kind is bool:
            parser.add_argument(flag(item.name), type=_parse_bool, default=item.default, metavar="true|false")
        else:
            parser.add_argument(flag(item.name), type=kind if kind in (int, float) else str, default=item.default,
                                **extra)
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: Optional[List[str]] = None) -> TrainArgs:
    return TrainArgs(**vars(build_parser().parse_args(argv)))
