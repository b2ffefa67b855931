"""End to end: `python -m finetune` in a subprocess on a slice of the bundled data with the tiny model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_finetune(tmp_path: Path, model_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "finetune",
        "search=none",
        f"model.path={model_dir}",
        "dataset.sample=300",
        "automl.time_budget_s=3",
        "compute.num_threads=1",
        "model.epochs=1",
        f"output_root={tmp_path}",
        *overrides,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


@pytest.mark.slow  # two full local pipelines
def test_full_local_pipeline_then_a_second_run_against_production(tmp_path, tiny_model_dir):
    first = run_finetune(tmp_path, tiny_model_dir, "run_name=first")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())

    assert set(summary["candidates"]) == {"finetuned", "automl"}
    for candidate in summary["candidates"].values():
        assert {"accuracy", "f1_weighted", "auc_weighted"} <= set(candidate["test"])
    assert summary["data"]["splits"]["test"]["rows"] == 30
    assert len(summary["data"]["raw_sha256"]) == 64
    selection = summary["selection"]
    assert selection["decision"] == "register" and selection["winner"] in summary["candidates"]
    assert summary["registry"]["version"] == "1"
    rollout = summary["rollout"]
    assert rollout["status"] == "succeeded" and rollout["traffic"] == {rollout["deployment"]: 100}
    assert len(rollout["smoke_test"]["response"]["predictions"]) == len(summary["registry"]["sample_request"]["data"])
    assert rollout["running"] is False, "python -m finetune stops the endpoint processes it started"
    assert summary["training"]["throughput"]["train_samples_per_s"] > 0
    assert summary["training"]["runtime"]["device"] == "cpu"
    report = (tmp_path / "first" / "report.md").read_text()
    assert "## Training throughput and resources" in report and "## Candidates on the test split" in report
    assert all(Path(figure).exists() for figure in summary["figures"])
    assert (tmp_path / "first" / "plan.yaml").exists()
    assert "test every candidate" in first.stdout
    assert "**finished**" in report and "**base model**" in report and (tmp_path / "first" / "report.html").is_file()
    # Clean output: progress on stderr as one bar, no HF log dicts, library bars or result JSON.
    assert "{'loss'" not in first.stdout and '"status"' not in first.stdout
    assert "Map:" not in first.stderr and "Writing model shards" not in first.stderr and "train:" in first.stderr
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in first.stdout
    _assert_runs_are_nested_and_the_version_links_to_its_metrics(tmp_path, summary)

    second = run_finetune(tmp_path, tiny_model_dir, "run_name=second", "automl=none", "endpoint=none")
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert "production" in summary["candidates"], "the model in production is re-scored on this run's test split"
    table = {row["candidate"]: row for row in summary["selection"]["table"]}
    if table["finetuned"]["auc_weighted"] > table["production"]["auc_weighted"] + summary["selection"]["margin"]:
        assert summary["selection"]["decision"] == "register"
    else:
        assert summary["selection"]["decision"] == "keep_production"
        assert "rollout" not in summary

    # One test evaluation: the training run's MLflow test figures are the selection's numbers.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    trained = json.loads(Path(summary["candidates"]["finetuned"]["result_file"]).read_text())
    logged = client.get_run(trained["mlflow_run_id"]).data.metrics
    assert "test" not in trained
    for metric in ("auc_weighted", "f1_macro", "recall.negative"):
        assert logged[f"test_{metric}"] == pytest.approx(summary["selection"]["test"]["finetuned"][metric])
    assert summary["candidates"]["finetuned"]["decision"]["rule"] == "threshold"

    # A second dataset in the same output root registers under its own name; the first one's production
    # model is never touched, and naming it explicitly is refused in one line before any training.
    name = "amazon_automotive-sentiment"
    production = client.get_model_version_by_alias(name, "production").version
    tickets = three_class_file(tmp_path / "tickets.csv")
    other = ["dataset=file", f"dataset.path={tickets}", "automl=none", "endpoint=none"]
    third = run_finetune(tmp_path, tiny_model_dir, "run_name=third", *other)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((tmp_path / "third" / "summary.json").read_text())["registry"]["name"] == "tickets-label"
    assert str(client.get_model_version_by_alias("tickets-label", "production").version) == "1"
    fourth = run_finetune(tmp_path, tiny_model_dir, "run_name=fourth", *other, f"select.registered_model_name={name}")
    assert fourth.returncode == 2
    error = fourth.stderr.strip().splitlines()
    assert len(error) == 1 and "select.replace_incompatible=true" in error[0], fourth.stderr[-3000:]
    assert "[2/" not in fourth.stdout, "refused before training"
    assert client.get_model_version_by_alias(name, "production").version == production


def three_class_file(path: Path) -> Path:
    """The bundled reviews with three labels of their own (low / mid / high stars)."""
    with open(REPO / "finetune" / "data_files" / "automotive_reviews.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        for row in rows:
            stars = int(row["star_rating"])
            writer.writerow((row["review_body"], "low" if stars <= 2 else "mid" if stars == 3 else "high"))
    return path


def _assert_runs_are_nested_and_the_version_links_to_its_metrics(tmp_path: Path, summary: dict) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    pipeline = client.get_run(summary["run"]["mlflow_run_id"])
    assert pipeline.info.run_name == "first" and pipeline.info.status == "FINISHED"
    tags = pipeline.data.tags
    assert tags["dataset.name"] == "amazon_automotive" and tags["dataset.raw_sha256"] == summary["data"]["raw_sha256"]
    assert tags["finetune.launcher"] == "local" and tags["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    children = client.search_runs([pipeline.info.experiment_id], f"tags.mlflow.parentRunId = '{pipeline.info.run_id}'")
    assert [run.info.run_name for run in children] == ["first-train"]
    train = children[0].data
    assert train.params["model"] == tags["base_model"] and "/" + "site-packages" not in train.params["model"]
    assert "train_loss" in train.metrics and "val_auc_weighted" in train.metrics
    version = client.get_model_version(summary["registry"]["name"], summary["registry"]["version"])
    assert version.run_id == pipeline.info.run_id
    assert f"test_{summary['selection']['metric']}" in pipeline.data.metrics


@pytest.mark.slow  # a full multi-label pipeline
def test_multi_label_example_end_to_end(tmp_path, tiny_model_dir):
    """The bundled GoEmotions sample: train -> AutoML -> select -> register -> local endpoint -> report, then the
    registered version through MLflow's pyfunc loader and batch prediction, all answering label lists."""
    done = run_finetune(
        tmp_path, tiny_model_dir, "run_name=emotions", "dataset=goemotions_sample", "dataset.sample=1500"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "emotions" / "summary.json").read_text())
    assert summary["data"]["task"] == "multi_label" and summary["data"]["split"] == "predefined"
    assert len(summary["data"]["labels"]) == 28
    for name in ("finetuned", "automl"):
        test = summary["selection"]["test"][name]
        assert {"f1_micro", "f1_macro", "hamming_loss", "auc_micro", "f1.neutral"} <= set(test)
        assert summary["candidates"][name]["decision"]["rule"] == "per_label_thresholds"
    assert summary["candidates"]["automl"]["best_estimator"] == "tfidf_ovr_lr"
    trained = json.loads((Path(summary["candidates"]["finetuned"]["path"]) / "config.json").read_text())
    assert trained["problem_type"] == "multi_label_classification"
    predictions = summary["rollout"]["smoke_test"]["response"]["predictions"]
    assert all(isinstance(p["labels"], list) and "label" not in p for p in predictions)
    assert summary["registry"]["name"] == "goemotions_sample-labels"
    report = (tmp_path / "emotions" / "report.md").read_text()
    assert "data_label_cooccurrence.png" in report and "per label:" in report and "per_label_f1.png" in report

    import mlflow.pyfunc
    import pandas as pd

    from finetune import predict

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{summary['registry']['name']}@production")
    texts = ["I love this so much, thank you!", "This is awful and I am furious."]
    table = loaded.predict(pd.DataFrame({"text": texts}))
    assert list(table.columns)[:2] == ["labels", "probability_admiration"] and len(table) == 2
    source = tmp_path / "comments.csv"
    pd.DataFrame({"id": ["a", "b"], "text": texts}).to_csv(source, index=False)
    predict.main(
        [
            "--model",
            f"{summary['registry']['name']}@production",
            "--input",
            str(source),
            "--output",
            str(tmp_path / "scored.parquet"),
            "--tracking-uri",
            uri,
        ]
    )
    scored = pd.read_parquet(tmp_path / "scored.parquet")
    assert [list(labels) for labels in scored["labels"]] == [list(labels) for labels in table["labels"]]
