"""The command line of each pipeline step, declared once: the builders render it, the step parses it back.

A step's arguments are a dataclass (:class:`TestAutomlArgs`, :class:`RegisterArgs`, :class:`DeployArgs`): each
field is a ``--flag`` (its name with ``-`` for ``_``), required unless it has a default, with its help and
choices in the field's metadata. The job builders (:mod:`finetune.launch.azureml.register`, ``.deploy``,
``.automl``) fill one with AML placeholders and put :func:`command_line` in the job; inside the job
:func:`parse` reads that line into the same dataclass. Loads no third-party library: both sides import it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional, Sequence, Union

from finetune.config.spec import TASKS
from finetune.launch.azureml.environment import AUTOML_PYTHON_VARIABLE

MODULE = "finetune.launch.azureml.runtime.steps"


def flag(help_text: str, default=dataclasses.MISSING, choices: Optional[Sequence[str]] = None):
    """A step argument: required when no ``default`` is given."""
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass(frozen=True, kw_only=True)
class TestAutomlArgs:
    """AutoML's best model as a candidate: its rule chosen on val, tested, packaged."""

    STEP: ClassVar[str] = "test-automl"
    HELP: ClassVar[str] = "choose AutoML's decision rule on val, test it, package it"
    model: str = flag("AutoML's best model (its MLflow output folder)")
    test_file: str = flag("the test split (CSV)")
    val_file: str = flag("the val split: the decision rule is chosen on it")
    labels_file: str = flag("labels.json of the prepared data")
    settings: str = flag("the pipeline's settings.json")
    task: str = flag("what the model answers", default="single_label", choices=TASKS)
    output_dir: str = flag("where result.json and the candidate folder go")
    python: Optional[str] = flag(
        f"a Python with the model's dependencies (default: ${AUTOML_PYTHON_VARIABLE}, else this one)", default=None
    )


@dataclass(frozen=True, kw_only=True)
class RegisterArgs:
    """Select among the candidates and production, register the winner."""

    STEP: ClassVar[str] = "register"
    HELP: ClassVar[str] = "select the best candidate and register it"
    finetuned: str = flag("the fine-tuned model (the training's output folder)")
    test_file: str = flag("the test split (CSV)")
    val_file: Optional[str] = flag("the val split: decision rules are chosen on it before the test", default=None)
    labels_file: str = flag("labels.json of the prepared data")
    settings: str = flag("the pipeline's settings.json")
    output_dir: str = flag("where model_ref.json goes")
    automl_result: Optional[str] = flag("the test-automl step's output, to compare AutoML's model too", default=None)


@dataclass(frozen=True, kw_only=True)
class DeployArgs:
    """Roll the registered model out to the endpoint."""

    STEP: ClassVar[str] = "deploy"
    HELP: ClassVar[str] = "roll the registered model out to the endpoint"
    model_ref: str = flag("the register step's output (model_ref.json)")
    settings: str = flag("the pipeline's settings.json")
    output_dir: str = flag("where rollout.json goes")


StepArgs = Union[TestAutomlArgs, RegisterArgs, DeployArgs]
STEPS = {args.STEP: args for args in (TestAutomlArgs, RegisterArgs, DeployArgs)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def command_line(args: StepArgs) -> str:
    """``python -m <steps> <step> --flag value ...`` for a job's ``command``; unset optional flags are left out.

    Values go in as they are (AML placeholders such as ``${{inputs.test}}``, which shell quoting would break),
    so a value with whitespace is refused rather than split."""
    words = ["python", "-m", MODULE, args.STEP]
    for item in dataclasses.fields(args):
        value = getattr(args, item.name)
        if value is None:
            continue
        if not str(value) or any(character.isspace() for character in str(value)):
            raise ValueError(f"{args.STEP} {_flag(item.name)}={value!r}: a step argument is one word")
        words += [_flag(item.name), str(value)]
    return " ".join(words)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="Steps of the finetune AML pipeline (run inside AML jobs)."
    )
    steps = parser.add_subparsers(dest="step", required=True)
    for name, args in STEPS.items():
        step = steps.add_parser(name, help=args.HELP, description=args.__doc__)
        for item in dataclasses.fields(args):
            required = item.default is dataclasses.MISSING
            step.add_argument(
                _flag(item.name),
                dest=item.name,
                required=required,
                help=item.metadata["help"],
                choices=item.metadata["choices"],
                default=None if required else item.default,
            )
    return parser


def parse(argv: Optional[List[str]] = None) -> StepArgs:
    """The step's arguments from its command line (``argv`` after ``python -m <steps>``)."""
    namespace = vars(build_parser().parse_args(argv))
    return STEPS[namespace.pop("step")](**namespace)
