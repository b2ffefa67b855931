"""The training contract, written once: every setting ``python -m finetune.train`` takes.

Each section is a dataclass whose fields carry their default, their legal values (a :class:`Range` or a set
of choices) and whether a sweep may search them. Everything else reads these fields instead of listing them
again: the config schema (``ModelConfig`` is :class:`Hyperparameters` plus where the model is, ``TrainConfig``
is :class:`TrainingOptions`, ``ComputeConfig`` starts with :class:`SpeedOptions`), the plan-time value checks
(:mod:`finetune.config.ranges`), the searchable names and their legal values (:mod:`finetune.search.space`), the
training command line (:func:`to_argv` / :func:`parse_args`), the AML command's ``${{inputs.<name>}}``
placeholders and the table in docs/contracts.md (``tests/test_spec.py`` holds it to this module).

Adding a hyperparameter is one field of :class:`Hyperparameters` with its ``help``: with ``trainer=`` when
``TrainingArguments`` takes it as it is, otherwise plus the lines of :mod:`finetune.train` that use it (then
regenerate the docs table and the AML goldens: ``FINETUNE_UPDATE_DOCS=1 FINETUNE_UPDATE_GOLDEN=1 pytest tests/test_spec.py
tests/test_azureml_entities.py``).

Standard library only: the CLI, the plan check and an AML job's code snapshot all import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

TASKS = ("single_label", "multi_label", "ner")
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
            return (
                f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}{self.unit}"
            )
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


def setting(
    default: Any,
    legal: Optional[Range] = None,
    choices: Optional[Sequence[str]] = None,
    searchable: bool = False,
    trainer: Optional[str] = None,
    help: str = "",
) -> Any:
    """A field with its legal values (checked at plan time; a list's are its items'), whether it is searched,
    the ``TrainingArguments`` field it is handed to unchanged (when it is) and one line saying what it does
    (``--help`` of ``finetune.train``, docs/contracts.md and the plan view print it)."""
    metadata = {
        "range": legal,
        "choices": tuple(choices) if choices else None,
        "searchable": searchable,
        "trainer": trainer,
        "help": help,
    }
    if isinstance(default, list):
        # Each instance gets its own copy: dataclasses refuse a shared mutable default.
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def required(help: str) -> Any:
    """A setting without a default: the command line must give it."""
    return field(metadata={"range": None, "choices": None, "searchable": False, "trainer": None, "help": help})


def hyperparameter(default: Any, legal: Range, trainer: Optional[str] = None, help: str = "") -> Any:
    return setting(default, legal, searchable=True, trainer=trainer, help=help)


# ------------------------------------------------------------------------------------------------ sections


@dataclass
class Hyperparameters:
    """What a training learns with: ``model.<name>`` settings, searchable as ``search.space.<name>``."""

    learning_rate: float = hyperparameter(
        5e-5,
        POSITIVE,
        help="peak learning rate at the model's reference batch size (finetune.train.hardware scales it "
        "with the batch size it picks)",
    )
    batch_size: int = hyperparameter(
        16,
        AT_LEAST_1,
        help="examples per step per process (the reference batch size; a GPU may take a larger "
        "one, see compute.auto_batch_size)",
    )
    epochs: float = hyperparameter(
        2.0, POSITIVE, trainer="num_train_epochs", help="passes over the training split (a fraction stops part-way)"
    )
    max_length: int = hyperparameter(
        128, Range(2), help="tokens per text after truncation ([CLS] and [SEP] alone take two)"
    )
    head_lr_factor: float = hyperparameter(
        1.0,
        POSITIVE,
        help="the new classification head's learning rate as a multiple of learning_rate (the pretrained "
        "encoder keeps learning_rate)",
    )
    # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 there is a fraction of the steps.
    warmup_ratio: float = hyperparameter(
        0.0, BETA, trainer="warmup_steps", help="fraction of the total steps the learning rate warms up over"
    )
    weight_decay: float = hyperparameter(0.0, NON_NEGATIVE, trainer="weight_decay", help="AdamW decoupled weight decay")
    adam_beta1: float = hyperparameter(0.9, BETA, trainer="adam_beta1", help="AdamW first-moment decay")
    adam_beta2: float = hyperparameter(0.999, BETA, trainer="adam_beta2", help="AdamW second-moment decay")
    adam_epsilon: float = hyperparameter(
        1e-8, POSITIVE, trainer="adam_epsilon", help="AdamW denominator term that keeps the step finite"
    )
    gradient_accumulation_steps: int = hyperparameter(
        1,
        AT_LEAST_1,
        trainer="gradient_accumulation_steps",
        help="batches whose gradients add up before one optimizer step",
    )


CLASS_WEIGHTS = ("auto", "balanced", "none", "logit_adjusted")
# What training does when it is clearly not learning: finetune.train.learning_check.
LEARNING_CHECK = ("restart", "warn")
GOALS = ("maximize", "minimize")


@dataclass
class TrainingOptions:
    """How a training evaluates, stops and checkpoints: the ``train.<name>`` settings."""

    evals_per_epoch: int = setting(1, AT_LEAST_1, help="evaluations on the validation split per epoch")
    class_weights: str = setting(
        "auto",
        choices=CLASS_WEIGHTS,
        help="imbalance in the loss: auto = balanced weights for two classes, logit_adjusted for more "
        "(finetune.train.losses)",
    )
    # None is resolved by the plan: off in sweeps, where the sweep's policy stops trials.
    early_stopping_patience: Optional[int] = setting(
        None,
        NON_NEGATIVE,
        help="evaluations without a better primary metric before stopping; 0 = never, "
        "unset = 2 for a single run and off in sweeps",
    )
    checkpoint_every_steps: int = setting(
        0, NON_NEGATIVE, help="also checkpoint every N steps; 0 = at every evaluation only"
    )
    learning_check: Optional[str] = setting(
        None,
        choices=LEARNING_CHECK,
        help="when the model is clearly not learning (finetune.train.learning_check): restart once at a quarter of the "
        "learning rate, then stop | warn; unset = restart for a single run, warn in sweeps",
    )
    telemetry_interval_s: float = setting(5.0, POSITIVE, help="seconds between hardware telemetry samples")
    logging_steps: int = setting(10, AT_LEAST_1, help="steps between logged training losses")


@dataclass
class SpeedOptions:
    """Hardware switches of one training process, decided per device by :mod:`finetune.train.hardware`: ``compute.<name>``."""

    device: str = setting("auto", choices=("auto", "cpu", "cuda"), help="where training runs; auto = cuda if available")
    num_threads: int = setting(0, NON_NEGATIVE, help="CPU threads for training; 0 = the cores actually free")
    precision: str = setting(
        "auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="floating-point format of training; auto = finetune.train.hardware's choice per device",
    )
    torch_compile: str = setting(
        "auto",
        choices=("auto", "on", "off"),
        help="compile the model with torch.compile; auto = a per-card table in finetune.train.hardware",
    )
    group_by_length: bool = setting(True, help="batch texts of similar length together (less padding)")
    pad_to_multiple_of: int = setting(
        0,
        NON_NEGATIVE,
        help="pad batches to a multiple of N tokens; 0 = auto (64 with torch.compile on GPU, 8 on GPU, none on CPU)",
    )
    dataloader_workers: int = setting(
        -1, Range(-1), help="data loader worker processes; -1 = auto (2 per process on GPU, 0 on CPU)"
    )
    tf32: bool = setting(True, help="TF32 matrix multiplications on sm80+ GPUs")
    optim: str = setting("auto", help="a Trainer optimizer name; auto = adamw_torch_fused")
    attn_implementation: str = setting(
        "sdpa",
        choices=("sdpa", "eager", "flash_attention_2", "auto"),
        help="the attention kernel transformers loads the model with",
    )
    auto_batch_size: bool = setting(
        True,
        help="GPU: the largest power-of-two batch that fits (<= max_batch_size, >= 50 steps per epoch) "
        "with the learning rate scaled by lr_scaling; CPU: model.batch_size",
    )
    max_batch_size: int = setting(128, AT_LEAST_1, help="the largest batch auto_batch_size may pick")
    lr_scaling: str = setting(
        "sqrt",
        choices=("sqrt", "linear", "none"),
        help="how the learning rate follows a batch size larger than model.batch_size",
    )


@dataclass
class Inputs:
    """What one training reads and where it writes (docs/contracts.md, "Training entry point")."""

    train_file: str = required("the training split (a prepared split file)")
    val_file: str = required("the validation split, evaluated during training")
    labels_file: str = required("the label names in id order (JSON)")
    model: str = required("a Hugging Face model folder or hub id")
    output_dir: str = required("where the model, checkpoints and result.json go")
    seed: int = setting(0, SEED, help="seed of weight initialisation, shuffling and dropout")
    task: str = setting(
        "single_label",
        choices=TASKS,
        help="single_label: softmax over classes; multi_label: a sigmoid per label with binary "
        "cross-entropy, split cells are label lists; ner: a tag per word (JSONL token splits)",
    )


@dataclass
class Objective:
    """The metric training keeps its best evaluation by, and the sweep trial it reports that metric to."""

    primary_metric: str = setting("val_auc_weighted", help="the validation metric the best evaluation is kept by")
    goal: str = setting("maximize", choices=GOALS, help="whether primary_metric should grow or shrink")
    trial_storage: Optional[str] = setting(None, help="the sweep's Optuna storage URL (a sweep trial only)")
    study_name: Optional[str] = setting(None, help="the sweep's Optuna study (a sweep trial only)")
    trial_number: Optional[int] = setting(None, help="this trial's number in the study (a sweep trial only)")


@dataclass
class Reporting:
    """Where metrics and progress go."""

    tracking_uri: Optional[str] = setting(
        None, help="MLflow tracking URI; unset = MLflow's environment (on AML, the workspace)"
    )
    experiment: str = setting("finetune", help="the MLflow experiment of the run")
    run_name: Optional[str] = setting(None, help="the MLflow run name")
    parent_run_id: Optional[str] = setting(None, help="nest the MLflow run under this one (the pipeline run)")
    tags: Optional[str] = setting(None, help="a JSON object of MLflow tags for the run")
    model_id: Optional[str] = setting(None, help="the base model as logged (hub id or name); unset = --model")
    progress: bool = setting(True, help="print a progress bar")
    progress_file: Optional[str] = setting(
        None, help="write progress (step, total, latest metrics) as JSON here (a sweep trial)"
    )


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
    return {
        item.metadata["trainer"]: getattr(args, item.name)
        for item in dataclasses.fields(Hyperparameters)
        if item.metadata.get("trainer")
    }


def logged_parameters(args: TrainArgs) -> dict:
    """What result.json and the MLflow run record as a training's hyperparameters: every one of
    :class:`Hyperparameters`, the seed, and the loss and stopping settings."""
    names = [item.name for item in dataclasses.fields(Hyperparameters)] + [
        "seed",
        "class_weights",
        "early_stopping_patience",
        "learning_check",
    ]
    return {name: getattr(args, name) for name in names}


def _inner_type(kind: Any) -> Any:
    """``int`` for ``Optional[int]``."""
    if typing.get_origin(kind) is typing.Union:
        return next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def reference_table() -> str:
    """Every training argument as a Markdown table: the block of docs/contracts.md between its ``spec`` markers
    (``tests/test_spec.py`` holds the two equal; ``FINETUNE_UPDATE_DOCS=1`` rewrites the block)."""
    rows = ["| flag | section | default | legal values | searchable | what it does |", "|---|---|---|---|---|---|"]
    for section in SECTIONS:
        for item in dataclasses.fields(section):
            default = "required" if item.default is dataclasses.MISSING else f"`{item.default}`"
            cells = [
                f"`{flag(item.name)}`",
                section.__name__,
                default,
                _allowed_values(item),
                "yes" if item.metadata.get("searchable") else "",
                item.metadata["help"],
            ]
            # A '|' inside a cell would end it.
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def _allowed_values(item: dataclasses.Field) -> str:
    """A setting's legal values as the docs and ``--help`` write them: its range, or its choices."""
    legal, choices = item.metadata.get("range"), item.metadata.get("choices")
    return legal.describe() if legal else " | ".join(choices) if choices else ""


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
    """The command line of :class:`TrainArgs`, one group per section, each flag with its declared help."""
    parser = argparse.ArgumentParser(
        prog="python -m finetune.train",
        description="Fine-tune a Hugging Face encoder as a text classifier on prepared split files.",
    )
    hints = typing.get_type_hints(TrainArgs)
    for section in SECTIONS:
        group = parser.add_argument_group(section.__name__, section.__doc__.splitlines()[0])
        for item in dataclasses.fields(section):
            kind = _inner_type(hints[item.name])
            described = item.metadata["help"].replace("%", "%%")
            legal = item.metadata.get("range")
            if item.default is dataclasses.MISSING:
                group.add_argument(flag(item.name), required=True, help=described)
                continue
            described += f" (default: {item.default}{'; ' + legal.describe() if legal else ''})"
            if kind is bool:
                group.add_argument(
                    flag(item.name), type=_parse_bool, default=item.default, metavar="true|false", help=described
                )
            else:
                group.add_argument(
                    flag(item.name),
                    type=kind if kind in (int, float) else str,
                    default=item.default,
                    choices=item.metadata.get("choices"),
                    help=described,
                )
    return parser


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv: Optional[List[str]] = None) -> TrainArgs:
    return TrainArgs(**vars(build_parser().parse_args(argv)))
