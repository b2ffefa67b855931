"""Training and its MLflow store: on AML a store that cannot be opened fails the job at start, in one line;
locally a tracking outage never costs a finished training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import train_arguments
from finetune.config.schema import DatasetConfig
from finetune.data import prepare
from finetune.train.command_line import main as train_main

BUNDLED = DatasetConfig(source="bundled", text_column="review_body", rating_column="star_rating")
# What AML sets for a job's run (the workspace's MLflow URI; see azureml-mlflow's service_context_loader).
AML_URI = (
    "azureml://eastus.api.azureml.ms/mlflow/v2.0/subscriptions/0/resourceGroups/rg/providers/"
    "Microsoft.MachineLearningServices/workspaces/ws"
)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    prepare(dataclasses.replace(BUNDLED, sample=120), out)
    return out


def arguments(data: Path, model: Path, out: Path, *extra: str) -> list:
    return train_arguments(data, model, out, "--epochs", "1", *extra)


def test_an_aml_job_whose_tracking_store_fails_stops_at_start_in_one_line(
    small_data, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", AML_URI)
    monkeypatch.setenv("AZUREML_RUN_ID", "trial_1")

    # What mlflow-skinny without azureml-mlflow raises on an azureml:// URI (its store registry has no such scheme).
    def unsupported(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        raise MlflowException("Could not find a registered tracking store for scheme 'azureml'")

    # Inside AML the first store call resumes the run AML created (no set_experiment there).
    monkeypatch.setattr(mlflow, "start_run", unsupported)
    code = train_main(arguments(small_data, tiny_model_dir, tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: MLflow tracking at azureml://") and "azureml-mlflow" in err[0]
    # Nothing was trained: the failure came before the model was loaded.
    assert not (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow  # a real (tiny) fine-tune
def test_locally_a_tracking_outage_keeps_the_finished_training(
    small_data, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import mlflow

    calls = {"n": 0}
    real = mlflow.log_metrics

    def fails_after_the_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("tracking server went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_metrics", fails_after_the_first)
    monkeypatch.setattr(mlflow, "end_run", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("still away")))
    out = tmp_path / "out"
    code = train_main(
        arguments(
            small_data,
            tiny_model_dir,
            out,
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--logging-steps",
            "1",
        )
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and (out / "model" / "candidate.json").is_file()
    assert capsys.readouterr().err.count("MLflow logging failed") == 1


def test_locally_an_unopenable_store_trains_untracked(small_data, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    # A sqlite file in a folder that is a file: the store cannot be created.
    (tmp_path / "blocker").write_text("")
    code = train_main(
        arguments(small_data, tiny_model_dir, out, "--tracking-uri", f"sqlite:///{tmp_path / 'blocker' / 'mlflow.db'}")
    )
    assert code == 0
    assert json.loads((out / "result.json").read_text())["status"] == "completed"
    assert "training goes on untracked" in capsys.readouterr().err


@pytest.mark.slow  # a real fine-tune against a recorded AML tracking service
def test_inside_an_aml_job_training_logs_to_the_run_aml_created(small_data, tiny_model_dir, tmp_path):
    """AML opens the job's run in the job's experiment and names it in MLFLOW_RUN_ID; training must log there and
    name no experiment of its own (MLflow refuses to resume a run under another active experiment). A process of
    its own, as a job is: MLflow's active run and tracking URI are process-global."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'workspace.db'}"
    client = MlflowClient(uri)
    job_experiment = client.create_experiment("sweep-of-the-job")
    job_run = client.create_run(job_experiment).info.run_id
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_RUN_ID": job_run,
        "AZUREML_RUN_ID": "trial_1",
        "MLFLOW_EXPERIMENT_ID": job_experiment,
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.train",
            *arguments(small_data, tiny_model_dir, tmp_path / "out", "--logging-steps", "1"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    logged = client.get_run(job_run).data
    assert any(key.startswith("val_") for key in logged.metrics) and logged.params
    assert client.get_experiment_by_name("finetune") is None
