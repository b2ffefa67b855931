"""Registered versions are MLflow pyfunc models with their runtime's environment and a model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from finetune import predict
from finetune.registry import model_registry as registry
from finetune.serve import score
from finetune.serve.export import export_candidate
from test_serve_support import LABELS, TEXTS, make_hf_candidate

CARD = {
    "name": "reviews-hf",
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "dataset": "amazon_automotive",
    "dataset_sha256": "r" * 64,
    "split_sha256": {"test": "s" * 64},
    "metrics": {"auc_weighted": 0.97, "f1_macro": 0.88},
}
REQUEST = {"data": [{"text": text} for text in TEXTS[:3]]}


@pytest.fixture(scope="module")
def registered(tiny_model_dir, tmp_path_factory):
    """The tiny classifier registered twice: as trained (torch) and exported (onnx-int8), the latter in production."""
    root = tmp_path_factory.mktemp("mlflow-model")
    store = f"sqlite:///{root / 'mlflow.db'}"
    trained = make_hf_candidate(tiny_model_dir, root / "trained")
    versions = {}
    for runtime in ("torch", "onnx-int8"):
        candidate = export_candidate(trained, runtime, root / runtime)
        versions[runtime] = registry.register(candidate, "reviews-hf", store, {"source": runtime}, REQUEST, card=CARD)
    registry.promote("reviews-hf", versions["onnx-int8"]["version"], store)
    return store, versions


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_pyfunc_load_of_the_production_alias_predicts_like_score_py(registered, monkeypatch):
    import mlflow.pyfunc

    store, versions = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", store)
    model = mlflow.pyfunc.load_model("models:/reviews-hf@production")
    out = model.predict(pd.DataFrame({"text": TEXTS}))
    columns = [f"probability_{label}" for label in LABELS]
    assert list(out.columns) == ["label", *columns] and len(out) == len(TEXTS)
    folder = Path(registry.resolve("reviews-hf", versions["onnx-int8"]["version"], store).path)
    scorer = score.load_scorer(folder)
    assert scorer.runtime == "onnx-int8"
    expected = scorer.predict_proba(TEXTS)
    assert np.allclose(out[columns].to_numpy(), expected, atol=1e-6)
    assert out.label.tolist() == score.decided_labels(expected, LABELS, scorer.decision)
    signature = model.metadata.get_input_schema().to_dict()
    assert signature == [{"type": "string", "name": "text", "required": True}]
    assert [c["name"] for c in model.metadata.get_output_schema().to_dict()] == ["label", *columns]
    example = json.loads((folder / "input_example.json").read_text())
    assert example["columns"] == ["text"] and len(example["data"]) == 3


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_each_version_carries_its_runtime_environment_and_a_model_card(registered):
    store, versions = registered
    for runtime, other in (("torch", "onnxruntime"), ("onnx-int8", "torch")):
        folder = Path(registry.resolve("reviews-hf", versions[runtime]["version"], store).path)
        requirements = (folder / "requirements.txt").read_text().split()
        names = [line.split("==")[0] for line in requirements]
        assert ("torch" if runtime == "torch" else "onnxruntime") in names and other not in names
        assert "mlflow-skinny" in names and "transformers" in names
        assert (
            yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]["loader_module"]
            == "finetune_score"
        )
        assert (folder / "code" / "finetune_score.py").read_text() == registry.SCORE_SCRIPT.read_text()
        card = (folder / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["base_model"] == CARD["base_model"] and front["datasets"] == ["amazon_automotive"]
        metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
        assert metrics == CARD["metrics"]
        assert "r" * 64 in card and f"runtime: {runtime}" in card and "## Limits" in card
        assert "decision rule: the label with the highest probability" in card


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_registering_the_same_export_again_finds_the_same_version(registered, tmp_path):
    """Even when another run's test split gives other metrics: the card describes the model, it is not the model."""
    store, versions = registered
    folder = Path(registry.resolve("reviews-hf", versions["torch"]["version"], store).path)
    other_run = {**CARD, "metrics": {"auc_weighted": 0.5}}
    again = registry.register(folder, "reviews-hf", store, {"source": "again"}, REQUEST, card=other_run)
    assert again["existing"] and again["version"] == versions["torch"]["version"]


@pytest.mark.slow  # registers MLflow models and builds pyfunc packages (module fixture)
def test_predict_takes_an_alias_or_a_version(registered, tmp_path, capsys):
    store, versions = registered
    data = tmp_path / "in.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": TEXTS[:3]}).to_csv(data, index=False)
    outputs = {}
    for spec in ("reviews-hf@production", f"models:/reviews-hf/{versions['onnx-int8']['version']}"):
        target = tmp_path / f"{len(outputs)}.csv"
        assert (
            predict.main(
                [
                    "--model",
                    spec,
                    "--input",
                    str(data),
                    "--output",
                    str(target),
                    "--tracking-uri",
                    store,
                    "--no-progress",
                ]
            )
            == 0
        )
        outputs[spec] = pd.read_csv(target)
    first, second = outputs.values()
    assert first.equals(second) and first.id.tolist() == [1, 2, 3]
    assert "scored 3 rows" in capsys.readouterr().out


def test_packaging_keeps_mlflows_validation_chatter_off_the_console(tiny_model_dir, tmp_path, capfd):
    import logging

    from finetune.registry.environments import conda_spec
    from finetune.registry.packaging import write_mlflow_model

    folder = make_hf_candidate(tiny_model_dir, tmp_path / "candidate")
    write_mlflow_model(folder, LABELS, conda_spec(["numpy"]), TEXTS[:2])
    assert (folder / "MLmodel").is_file()
    assert "Validating input example" not in capfd.readouterr().err
    assert logging.getLogger("mlflow.pyfunc").level == logging.NOTSET  # restored for everyone else
