"""The training command job: the local launcher's ``python -m finetune.train`` call, as an AML command.

The arguments come from :func:`finetune.train.process.train_args`, the function the local single run
and every local sweep trial use, with AML's placeholders put in: each split is its own ``uri_file``
input, every searchable hyperparameter of the training contract a ``${{inputs.<name>}}`` input (which a
sweep replaces by a search dimension), the output folder the ``custom_model`` output. The tracking URI is
left out: without it training logs to the MLflow the job's environment points at, which in an AML job is
the workspace, so a sweep reads ``val_auc_weighted`` and friends from there.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from typing import TYPE_CHECKING, List, Optional

from finetune.config.model_files import model_config
from finetune.config.spec import searchable, to_argv
from finetune.train.process import train_args

if TYPE_CHECKING:
    from finetune.launch.azureml.data import DataRefs
    from finetune.plan.run_plan import RunPlan

OUTPUT = "custom_model"
# Inputs of the split files, by the training argument that reads them.
DATA_INPUTS = {"train_file": "train", "val_file": "val", "labels_file": "labels"}
_PLAIN = re.compile(r"[\w./:@%+=,{}$-]+")


def placeholder(kind: str, name: str) -> str:
    return "${{%s.%s}}" % (kind, name)


def model_hub_id(config_name: str) -> Optional[str]:
    """The hub id of a model config (conf/model/<name>.yaml), or None (no such config, or no hub id)."""
    model = model_config(config_name)
    return model.hub_id if model else None


def hyperparameter_inputs(plan: "RunPlan") -> dict:
    return {name: getattr(plan.model, name) for name in searchable()}


def model_input(plan: "RunPlan"):
    """What ``--model`` reads: a hub id (AML nodes download it), or the local model folder uploaded.

    A sweep over ``model`` passes hub ids, so the base model is then named by its hub id too.
    """
    from azure.ai.ml import Input

    if "model" in plan.search.space or not plan.model.path:
        return plan.model.hub_id
    return Input(type="uri_folder", path=plan.model.path)


def arguments(plan: "RunPlan") -> List[str]:
    """``python -m finetune.train`` arguments with AML placeholders (see the module docstring)."""
    hyperparameters = {name: placeholder("inputs", name) for name in hyperparameter_inputs(plan)}
    args = train_args(
        plan, ".", placeholder("outputs", OUTPUT), hyperparameters, model_path=placeholder("inputs", "model")
    )
    # The trial logs are read in the studio: a progress bar there is one line per refresh.
    return to_argv(
        dataclasses.replace(
            args,
            tracking_uri=None,
            progress=False,
            **{key: placeholder("inputs", name) for key, name in DATA_INPUTS.items()},
        )
    )


def command_line(args: List[str]) -> str:
    return " ".join(arg if _PLAIN.fullmatch(arg) else shlex.quote(arg) for arg in args)


def distribution(plan: "RunPlan"):
    """One PyTorch process per GPU (torchrun-style env for the HF Trainer), only when there are several."""
    from azure.ai.ml import PyTorchDistribution

    compute = plan.compute
    if compute.instance_count * compute.processes_per_node <= 1:
        return None
    return PyTorchDistribution(process_count_per_instance=compute.processes_per_node)


def train_command(plan: "RunPlan", data: "DataRefs", code: str, environment):
    """The command node (a standalone job via ``._to_job()``, a pipeline step when called with inputs)."""
    from azure.ai.ml import Input, Output, command

    inputs = {key: Input(type="uri_file", path=data.files[key]) for key in DATA_INPUTS.values()}
    inputs["model"] = model_input(plan)
    inputs.update(hyperparameter_inputs(plan))
    return command(
        name="train",
        display_name=f"train {plan.model.name}",
        description=f"fine-tune {plan.model.name} on {plan.dataset.name} (python -m finetune.train)",
        experiment_name=plan.tracking.experiment,
        command=command_line(["python", "-m", "finetune.train", *arguments(plan)]),
        code=code,
        environment=environment,
        compute=plan.compute.cluster_name,
        inputs=inputs,
        outputs={OUTPUT: Output(type="custom_model")},
        instance_count=plan.compute.instance_count,
        distribution=distribution(plan),
        timeout=plan.search.limits.trial_timeout if plan.search.sampling == "none" else None,
        tags={"run": plan.name, "model": plan.model.name, "dataset": plan.dataset.name},
    )
