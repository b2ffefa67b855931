"""Batch prediction on AML: ``python -m finetune.predict`` as a command job over a data asset.

Exported as ``aml/predict.yml`` with every plan (``dry_run=true`` included) and run with
``az ml job create -f predict.yml --set inputs.data.path=azureml:<asset>:<version>``.

Why a command job and not a batch endpoint deployment of the MLflow model: a batch endpoint is a
standing resource (endpoint + deployment + cluster) that hands mini-batches of *files* to AML's generated
MLflow driver, whose output is one prediction per row with no columns of the input, so the id column is
lost unless a custom scoring script writes its own output
(https://learn.microsoft.com/azure/machine-learning/how-to-deploy-model-custom-output). This job runs the
scoring the project tests locally — the same streaming reader, id pass-through, runtime and decision rule
— on the same cluster and environment as the pipeline, with nothing left running afterwards. The registered
version is an ``mlflow_model`` all the same, so a team that wants a batch endpoint can deploy it with
no code (AML generates the driver and environment from the MLmodel file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

OUTPUT = "predictions"
OUTPUT_FILE = "predictions.csv"


def predict_job(plan: "RunPlan", data: str, code: str, environment, model: str):
    """The command job: ``data`` a ``uri_file`` path or ``azureml:<asset>:<version>``, ``model`` an
    ``azureml:<name>@latest`` or ``azureml:<name>:<version>`` reference to the registered MLflow model;
    ``environment`` the pipeline steps' one (the whole package, CPU torch)."""
    from azure.ai.ml import Input, Output, command

    line = (
        "python -m finetune.predict --model ${{inputs.model}} --input ${{inputs.data}} "
        "--output ${{outputs.%s}}/%s --no-progress" % (OUTPUT, OUTPUT_FILE)
    )
    return command(
        name="predict",
        display_name=f"batch prediction with {plan.select.registered_model_name}",
        description="score a file of texts (CSV / JSONL / parquet) with the registered model (python -m finetune.predict)",
        experiment_name=plan.tracking.experiment,
        command=line,
        code=code,
        environment=environment,
        # Scoring runs on CPU (score.py's runtimes): the steps' CPU cluster when the plan has one.
        compute=plan.compute.steps_cluster_name or plan.compute.cluster_name,
        inputs={"model": Input(type="mlflow_model", path=model), "data": Input(type="uri_file", path=data)},
        outputs={OUTPUT: Output(type="uri_folder")},
        tags={"run": plan.name, "model": plan.select.registered_model_name},
    )
