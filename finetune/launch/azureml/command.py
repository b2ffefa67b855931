"""The training command job: the local launcher's ``python -m finetune.train`` call, as an AML command.

The arguments come from :func:`finetune.plan.train_command_args`, the function the local single run
and every local sweep trial use, with AML's placeholders put in: each split is its own ``uri_file``
input, every hyperparameter a ``${{inputs.<name>}}`` input (which a sweep replaces by a search
dimension), the output folder the ``custom_model`` output. ``--tracking-uri`` is dropped: without it
training logs to the MLflow the job's environment points at, which in an AML job is the workspace,
so a sweep reads ``val_auc_weighted`` and friends from there.
"""
from __future__ import annotations

import re
import shlex
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from finetune.launch.azureml.data import DataRefs
    from finetune.plan import RunPlan

OUTPUT = "custom_model"
# Inputs of the split files, by the train entry point's flag.
DATA_FLAGS = {"--train-file": "train", "--val-file": "val", "--labels-file": "labels"}
# Flags whose local value means nothing on AML.
DROPPED_FLAGS = ("--tracking-uri",)
_PLAIN = re.compile(r"[\w./:@%+=,{}$-]+")


def placeholder(kind: str, name: str) -> str:
    return "${{%s.%s}}" % (kind, name)


@lru_cache(maxsize=None)
def model_hub_id(config_name: str) -> Optional[str]:
    """The hub id of a model config (conf/model/<name>.yaml), or None (no such config, or no hub id)."""
    import yaml

    entry = resources.files("finetune.conf").joinpath("model", f"{config_name}.yaml")
    if not entry.is_file():
        return None
    return (yaml.safe_load(entry.read_text()) or {}).get("hub_id")


def hyperparameter_inputs(plan: "RunPlan") -> dict:
    from finetune.plan import HYPERPARAMETERS

    return {name: getattr(plan.model, name) for name in HYPERPARAMETERS}


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
    from finetune.plan import train_command_args

    hyperparameters = {name: placeholder("inputs", name) for name in hyperparameter_inputs(plan)}
    args = train_command_args(plan, ".", placeholder("outputs", OUTPUT), hyperparameters,
                              model_path=placeholder("inputs", "model"))
    result, index = [], 0
    while index < len(args):
        flag = args[index]
        if flag in DROPPED_FLAGS:
            index += 2
            continue
        result.append(flag)
        if flag in DATA_FLAGS:
            result.append(placeholder("inputs", DATA_FLAGS[flag]))
            index += 2
            continue
        index += 1
    # The trial logs are read in the studio: a progress bar there is one line per refresh.
    return result + ["--progress", "false"]


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

    inputs = {key: Input(type="uri_file", path=data.files[key]) for key in DATA_FLAGS.values()}
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
