"""The exported AML tree runs end to end as Azure ML would run it (scripts/aml_emulate.py): a small plan on AML CPU
compute, 2 sweep trials of the tiny BERT, register and deploy, from the code snapshot without the package installed.

This is the test that sees what a real workspace would see: a job that cannot track through the azureml:// URI,
a step that reads package metadata, a command line that does not parse, a sweep whose metric never arrives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amlemu.environments import CACHE
from amlemu.recorder import build

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "aml_emulate.py"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, tiny_model_dir):
    """The exported tree of a small CPU plan (what `python -m finetune ... dry_run=true` writes)."""
    from finetune.data import prepare
    from finetune.launch.azureml import export

    out = tmp_path_factory.mktemp("emulated")
    plan = build(
        [
            "model=bert-base-cased",
            f"model.path={tiny_model_dir}",
            "search=bandit",
            "compute=cpu",
            "automl=none",
            "search.limits.max_total_trials=2",
            "dataset.sample=200",
            "model.epochs=1",
            "dry_run=true",
        ],
        out,
        "ci",
    )
    exported = export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    return exported.folder


def emulate(tree: Path, work: Path) -> tuple:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(tree), "--work", str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads((work / "emulation.json").read_text()) if (work / "emulation.json").is_file() else []
    return completed, {result["node"]: result for result in results}


@pytest.mark.slow  # the whole exported AML pipeline, emulated
def test_exported_tree_runs_end_to_end_as_aml_would(tree, tmp_path):
    completed, nodes = emulate(tree, tmp_path / "work")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(nodes) == ["sweep", "register", "deploy"]
    # The job Python resolved finetune to the uploaded snapshot only.
    assert (
        "finetune from " in completed.stdout and "/probe/code/finetune/__init__.py (no dist-info)" in completed.stdout
    )
    # ... in a venv built from the job's own environment spec, not the interpreter that runs the emulator.
    assert f"job Python {sys.prefix}:" not in completed.stdout and f"job Python {CACHE}/" in completed.stdout

    sweep = nodes["sweep"]
    assert len(sweep["trials"]) == 2 and all(t["status"] in ("completed", "early-terminated") for t in sweep["trials"])
    # Every trial's objective was read back from what training logged through the azureml:// URI.
    assert all(t["val_auc_weighted"] is not None and t["evaluations"] >= 1 for t in sweep["trials"])
    assert sweep["service_calls"].get("mlflow via azureml://", 0) > 0
    # Sampled from sweep.yml's space: the learning rate inside its log-uniform bounds, the batch size a choice.
    for trial in sweep["trials"]:
        assert 1e-5 <= trial["params"]["learning_rate"] <= 1e-4 and trial["params"]["batch_size"] in (16, 32)

    register = nodes["register"]
    assert register["status"] == "completed" and register["detail"].startswith(
        "registered amazon_automotive-sentiment:1"
    )
    assert register["service_calls"]["managed identity token"] >= 1 and register["service_calls"]["blob"] > 0
    deploy = nodes["deploy"]
    assert deploy["status"] == "completed" and deploy["detail"].startswith("succeeded")
    rollout = json.loads(next((tmp_path / "work" / "jobs").glob("*-deploy/outputs/rollout/rollout.json")).read_text())
    predictions = rollout["smoke_test"]["response"]["predictions"]
    assert predictions and all(p["label"] in ("negative", "positive") for p in predictions)
    assert rollout["smoke_test"]["response"]["model"] == {"name": "amazon_automotive-sentiment", "version": "1"}
    assert rollout["promoted"]["version"] == "1"
    assert "node" in completed.stdout and "sweep" in completed.stdout  # the node table


@pytest.fixture(scope="module")
def automl_tree(tmp_path_factory, tiny_model_dir):
    """The issue's "AutoML wins" plan (a T4 plan run on CPU, one trial, AutoML on) with the tiny BERT, which one
    epoch on 240 reviews leaves far behind the AutoML stand-in."""
    from finetune.data import prepare
    from finetune.launch.azureml import export

    out = tmp_path_factory.mktemp("emulated-automl")
    plan = build(
        [
            "model=bert-base-cased",
            f"model.path={tiny_model_dir}",
            "compute=t4",
            "compute.device=cpu",
            "compute.precision=fp32",
            "search=random",
            "search.limits.max_total_trials=1",
            "dataset.sample=300",
            "model.epochs=1",
            "model.max_length=32",
            "automl=text_classification",
            "dry_run=true",
        ],
        out,
        "automl",
    )
    exported = export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    return exported.folder


@pytest.mark.slow
def test_automl_winner_is_promoted_rolled_out_and_answers(automl_tree, tmp_path):
    """test-automl -> register (AutoML chosen and packaged) -> deploy (rollout, smoke test with the contract,
    Production) -> the registered version loads with finetune.predict and mlflow.pyfunc."""
    import mlflow.pyfunc
    import pandas as pd

    from finetune import predict

    work = tmp_path / "work"
    completed, nodes = emulate(automl_tree, work)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(nodes) == ["sweep", "automl", "test_automl", "register", "deploy"]
    assert nodes["automl"]["status"] == "stand-in" and "data checks passed" in nodes["automl"]["detail"]
    assert "(automl)" in nodes["register"]["detail"]
    labels = ["negative", "positive"]

    deployed = next((work / "jobs").glob("*-deploy/outputs/rollout"))
    choice = json.loads((deployed / "model_ref.json").read_text())
    assert choice["candidate"] == "automl" and choice["promoted"]["version"] == choice["version"]
    rollout = json.loads((deployed / "rollout.json").read_text())
    assert rollout["status"] == "succeeded"
    response = rollout["smoke_test"]["response"]
    assert response["model"] == {"name": choice["name"], "version": choice["version"]}
    assert all(p["label"] in labels and set(p["probabilities"]) == set(labels) for p in response["predictions"])

    # The version the endpoint serves, as the deployment downloaded it from the workspace's blob store.
    served = next((work / "deployments").glob("*/model"))
    candidate = json.loads((served / "candidate.json").read_text())
    assert candidate["family"] == "automl" and candidate["decision"]["rule"] == "threshold"
    texts = [item["text"] for item in json.loads((automl_tree / "settings.json").read_text())["sample_request"]["data"]]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "texts.csv", index=False)
    assert (
        predict.main(
            [
                "--model",
                str(served),
                "--input",
                str(tmp_path / "texts.csv"),
                "--output",
                str(tmp_path / "scored.csv"),
                "--no-progress",
            ]
        )
        == 0
    )
    batch = list(pd.read_csv(tmp_path / "scored.csv")["label"])
    assert batch == [p["label"] for p in response["predictions"]]
    assert list(mlflow.pyfunc.load_model(str(served)).predict(pd.DataFrame({"text": texts}))["label"]) == batch
