"""The register step: test the candidates with ``finetune.selection.choose``, register the winner as an AML model.

It runs on AML (``python -m finetune.launch.azureml.runtime.steps register``, see :mod:`.steps`) with the
compute's managed identity, and finds its workspace in the variables AML sets in every job: no
subscription or resource group travels as a job input. Never served from AML's pipeline cache
(``is_deterministic=False``): a rerun must look at the registry as it is now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.launch.azureml.compute import steps_compute
from finetune.launch.azureml.runtime.step_args import RegisterArgs, command_line

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

OUTPUT = "model_ref"


def step_args(automl: bool) -> RegisterArgs:
    """The step's arguments: each a job input or output placeholder; with ``automl``, the AutoML test step's too."""
    return RegisterArgs(
        finetuned="${{inputs.finetuned}}",
        test_file="${{inputs.test}}",
        val_file="${{inputs.val}}",
        labels_file="${{inputs.labels}}",
        settings="${{inputs.settings}}",
        output_dir="${{outputs.%s}}" % OUTPUT,
        automl_result="${{inputs.automl_result}}" if automl else None,
    )


def register_step(plan: "RunPlan", code: str, environment, *, automl: bool):
    """The command node; with ``automl`` it also takes the AutoML test step's output (its result and package)."""
    from azure.ai.ml import Input, Output, command
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    # val: each candidate's decision rule is chosen on it before the test (per-label thresholds for multi-label
    # data), as the local launcher's select stage does.
    inputs = {
        "finetuned": Input(type="custom_model"),
        "test": Input(type="uri_file"),
        "val": Input(type="uri_file"),
        "labels": Input(type="uri_file"),
        "settings": Input(type="uri_file"),
    }
    if automl:
        inputs["automl_result"] = Input(type="uri_folder")
    return command(
        name="register",
        display_name=f"select and register {plan.select.registered_model_name}",
        description=f"test the candidates on the test split, register the best by {plan.select.metric}",
        command=command_line(step_args(automl)),
        code=code,
        environment=environment,
        compute=steps_compute(plan),
        inputs=inputs,
        outputs={OUTPUT: Output(type="uri_folder")},
        identity=ManagedIdentityConfiguration(),
        is_deterministic=False,
    )
