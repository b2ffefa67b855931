"""AML side of serving: the batch prediction job's YAML, the runtime's deployment environment, mlflow_model registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from amlemu.recorder import build, guard_network

ONNX_PLAN = [
    "model=bert-base-cased",
    "search=none",
    "compute=cpu",
    "endpoint=managed",
    "endpoint.runtime=onnx-int8",
    "automl=none",
    "dry_run=true",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from finetune.data import prepare
    from finetune.launch.azureml import export

    plan = build(ONNX_PLAN, tmp_path_factory.mktemp("out"), "onnx")
    prepared = prepare(plan.dataset, Path(plan.run_dir) / "data")
    return plan, export.write(plan, prepared)


def test_batch_prediction_job_is_exported_and_loads_back(exported):
    from azure.ai.ml import load_job

    plan, result = exported
    path = result.folder / "predict.yml"
    assert path in result.files and path.read_text().startswith("# batch prediction")
    job = load_job(path)
    assert job.type == "command"
    assert job.command.startswith(
        "python -m finetune.predict --model ${{inputs.model}} --input ${{inputs.data}} "
        "--output ${{outputs.predictions}}/predictions.csv"
    )
    assert job.inputs["model"].type == "mlflow_model"
    assert job.inputs["data"].type == "uri_file"
    inputs = yaml.safe_load(path.read_text())["inputs"]
    assert inputs["model"]["path"] == f"azureml:{plan.select.registered_model_name}@latest"
    # The example input is the exported test split, a local file AML uploads.
    assert (result.folder / inputs["data"]["path"]).is_file()
    assert job.compute == plan.compute.cluster_name and job.code


def test_the_deployment_environment_holds_only_the_runtime(exported):
    plan, result = exported
    deployment = yaml.safe_load((result.folder / "deployment.yml").read_text())
    packages = [line.split("==")[0] for line in deployment["environment"]["conda_file"]["dependencies"][-1]["pip"]]
    assert "onnxruntime" in packages and "transformers" in packages
    assert not {"torch", "flaml", "azure-ai-ml", "hydra-core"} & set(packages)
    settings = json.loads(result.settings_path.read_text())
    assert settings["endpoint"]["runtime"] == "onnx-int8"
    # The register step writes this spec into the registered version's conda.yaml / MLmodel environment.
    assert settings["environment"]["conda_file"] == deployment["environment"]["conda_file"]


@pytest.mark.slow  # exports and registers real models
def test_register_step_exports_for_the_runtime_and_registers_an_mlflow_model(tiny_model_dir, tmp_path, monkeypatch):
    """The AML register step, against a stub MLClient: the winner is the exported model, as an mlflow_model."""
    from finetune.launch.azureml.runtime import steps
    from finetune.registry.environments import serving_conda_spec
    from test_select import write_splits
    from test_serve_support import LABELS, make_hf_candidate

    make_hf_candidate(tiny_model_dir, tmp_path / "transformer" / steps.CANDIDATE_DIR)
    data = write_splits(tmp_path / "data")
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    settings = {
        "run": "r",
        "select": {"metric": "auc_weighted", "margin": 0.0, "registered_model_name": "reviews"},
        "data": {"raw_sha256": "r" * 64, "splits": {}},
        "config": {"model": {"name": "tiny"}},
        "sample_request": {"data": [{"text": "fine"}]},
        "endpoint": {"runtime": "onnx-int8"},
        "environment": {"conda_file": serving_conda_spec("onnx-int8")},
        "deploy": True,
    }
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    created = []

    class Models:
        def list(self, name, stage=None):
            return []

        def download(self, name, version, download_path):
            pass

        def create_or_update(self, model):
            created.append(
                (
                    model,
                    {p.name for p in Path(model.path).iterdir()},
                    json.loads((Path(model.path) / "candidate.json").read_text()),
                )
            )
            model.version = model.version or "1"
            return model

    class Client:
        models = Models()

    ref = steps.register(
        str(tmp_path / "transformer"),
        str(data.test_path),
        str(tmp_path / "labels.json"),
        str(tmp_path / "settings.json"),
        str(tmp_path / "out"),
        ml_client=Client(),
    )
    ((model, files, candidate),) = created
    assert model.type == "mlflow_model" and ref.model_type == "mlflow_model"
    assert candidate["runtime"] == "onnx-int8" and "model.int8.onnx" in files
    assert {"MLmodel", "README.md", "score.py", "registered.json"} <= files
    assert not any(name.endswith(".safetensors") for name in files)
