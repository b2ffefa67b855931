"""Starting a training process, the one way both launchers' stages do it: the ``python -m finetune.train``
arguments of a run plan (the single run, every sweep trial, and with placeholders the AML command job) and the
command that runs them, plain for one device or under ``accelerate launch`` (DDP) for several GPUs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from finetune.config.spec import Hyperparameters, SpeedOptions, TrainArgs, TrainingOptions
from finetune.data.prepared import split_file
from finetune.plan.run_plan import RunPlan
from finetune.system import processes

SINGLE_RUN_PATIENCE = 2


def early_stopping_patience(plan: RunPlan) -> int:
    """The configured patience; unset, 2 evaluations for a single run and off in a sweep, whose early
    termination policy already stops trials (two stopping rules on one trial would blur what each does)."""
    if plan.train.early_stopping_patience is not None:
        return plan.train.early_stopping_patience
    return SINGLE_RUN_PATIENCE if plan.search.sampling == "none" else 0


def learning_check(plan: RunPlan) -> str:
    """The configured action; unset, ``restart`` for a single run and ``warn`` in a sweep: a trial restarted or
    stopped by its own check would report to the sweep's early-termination policy a curve that policy did not
    cut, so in a sweep the policy decides and the check only records and warns."""
    if plan.train.learning_check is not None:
        return plan.train.learning_check
    return "restart" if plan.search.sampling == "none" else "warn"


def _values(section: type, settings) -> dict:
    return {item.name: getattr(settings, item.name) for item in dataclasses.fields(section)}


def train_args(
    plan: RunPlan,
    data_dir: str,
    output_dir: str,
    hyperparameters: Optional[dict] = None,
    model_path: Optional[str] = None,
) -> TrainArgs:
    """The training arguments of this plan: the model's hyperparameters (``hyperparameters`` replaces them with
    a sweep trial's sample), ``train.*`` and the speed switches of ``compute.*``.

    ``data_dir`` holds the prepared split files named as in docs/contracts.md. ``compute.auto_batch_size`` is
    resolved by the plan (off when the batch size is searched).
    """
    data = Path(data_dir)
    return TrainArgs(
        train_file=str(data / split_file(plan.dataset.task, "train")),
        val_file=str(data / split_file(plan.dataset.task, "val")),
        labels_file=str(data / "labels.json"),
        model=model_path or plan.model.path or plan.model.hub_id,
        output_dir=str(output_dir),
        seed=plan.seed,
        task=plan.dataset.task,
        **{**_values(Hyperparameters, plan.model), **(hyperparameters or {})},
        **{
            **_values(TrainingOptions, plan.train),
            "early_stopping_patience": early_stopping_patience(plan),
            "learning_check": learning_check(plan),
        },
        **_values(SpeedOptions, plan.compute),
        primary_metric=plan.search.primary_metric,
        goal=plan.search.goal,
        tracking_uri=plan.tracking.uri,
        experiment=plan.tracking.experiment,
    )


def launch_command(train_argv: Sequence[str], gpus: int = 0, python: Optional[str] = None) -> List[str]:
    """The command that runs ``finetune.train``: plain for one device, ``accelerate launch`` (DDP) for gpus > 1.

    Mixed precision and compilation stay the Trainer's business (its arguments override accelerate's
    environment), so the launcher is told ``no`` for both instead of guessing defaults with a warning.
    """
    python = python or sys.executable
    if gpus <= 1:
        return [python, "-m", "finetune.train", *train_argv]
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--num_processes",
        str(gpus),
        "--main_process_port",
        str(processes.free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "finetune.train",
        *train_argv,
    ]
