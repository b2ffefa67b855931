"""The AML pipeline of a plan: sweep -> (AutoML -> test AutoML) -> register -> deploy.

``search=none`` puts the plain training command where the sweep was; ``automl=none`` drops the AutoML
node and its test step (the register step then selects among the fine-tuned model alone);
``endpoint=none`` drops the deploy step. Every node reads the same pipeline inputs: the split files,
the labels, the MLTables for AutoML and ``settings`` (the selection, tags, endpoint and environment
settings the register and deploy steps need; see :func:`finetune.launch.azureml.export.settings`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.launch.azureml import automl as automl_
from finetune.launch.azureml.command import DATA_INPUTS, OUTPUT, train_command
from finetune.launch.azureml.data import FILES
from finetune.launch.azureml.deploy import deploy_step
from finetune.launch.azureml.register import register_step
from finetune.launch.azureml.sweep import sweep_node

if TYPE_CHECKING:
    from finetune.launch.azureml.data import DataRefs
    from finetune.plan.run_plan import RunPlan


def parent(name: str) -> str:
    return "${{parent.inputs.%s}}" % name


def build(plan: "RunPlan", data: "DataRefs", code: str, environments: dict, settings: str):
    """The PipelineJob; ``code``, the data references and ``settings`` are paths or asset references.

    ``environments``: role -> Environment (:func:`finetune.launch.azureml.environment.definitions`): training
    for the sweep's trials, steps for register, deploy for deploy, automl_test for AutoML's test step.
    """
    from azure.ai.ml import Input
    from azure.ai.ml.entities import PipelineJob

    inputs = {key: Input(type="uri_file", path=data.files[key]) for key in FILES}
    inputs["settings"] = Input(type="uri_file", path=settings)
    # Training reads train, val and labels; the register step chooses decision rules on val, then tests once.
    splits = {key: parent(key) for key in DATA_INPUTS.values()}
    trial = train_command(plan, data, code, environments["training"])
    jobs = {}
    if plan.search.sampling == "none":
        train = trial(**splits)
        train.name = "train"
        jobs["train"] = train
    else:
        jobs["sweep"] = train = sweep_node(plan, trial, **splits)
    register_inputs = {
        "finetuned": train.outputs[OUTPUT],
        "test": parent("test"),
        "val": parent("val"),
        "labels": parent("labels"),
        "settings": parent("settings"),
    }

    with_automl = plan.automl.engine == "text_classification"
    if with_automl:
        for split in ("train", "val"):
            inputs[f"{split}_table"] = Input(type="mltable", path=data.tables[split])
        automl = automl_.text_classification(
            plan, data, node=True, training_data=parent("train_table"), validation_data=parent("val_table")
        )
        tested = automl_.test_step(plan, code, environments["automl_test"])(
            model=automl.outputs[automl_.BEST_MODEL],
            test=parent("test"),
            val=parent("val"),
            labels=parent("labels"),
            settings=parent("settings"),
        )
        tested.name = "test_automl"
        jobs.update(automl=automl, test_automl=tested)
        register_inputs["automl_result"] = tested.outputs[automl_.TEST_OUTPUT]
    registered = register_step(plan, code, environments["steps"], automl=with_automl)(**register_inputs)
    registered.name = "register"
    jobs["register"] = registered
    if plan.endpoint.target == "managed":
        deployed = deploy_step(plan, code, environments["deploy"])(
            model_ref=registered.outputs["model_ref"], settings=parent("settings")
        )
        deployed.name = "deploy"
        jobs["deploy"] = deployed

    return PipelineJob(
        display_name=plan.name,
        description=f"finetune: {' -> '.join(jobs)} ({plan.model.name} on {plan.dataset.name})",
        experiment_name=plan.tracking.experiment,
        compute=plan.compute.cluster_name,
        inputs=inputs,
        jobs=jobs,
        tags={"run": plan.name, "model": plan.model.name, "dataset": plan.dataset.name, "search": plan.search.name},
    )
