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

from amlemu.recorder import build

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "aml_emulate.py"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, tiny_model_dir):
    """The exported tree of a small CPU plan (what `python -m finetune ... dry_run=true` writes)."""
    from finetune.data import prepare
    from finetune.launch.azureml import export

    out = tmp_path_factory.mktemp("emulated")
    plan = build(["model=bert-base-cased", f"model.path={tiny_model_dir}", "search=bandit", "compute=cpu",
                  "automl=none", "search.limits.max_total_trials=2", "dataset.sample=200", "model.epochs=1",
                  "dry_run=true"], out, "ci")
    exported = export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    return exported.folder


def emulate(tree: Path, work: Path) -> tuple:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, str(SCRIPT), str(tree), "--work", str(work)], env=env,
                               capture_output=True, text=True, timeout=600)
    results = json.loads((work / "emulation.json").read_text()) if (work / "emulation.json").is_file() else []
    return completed, {result["node"]: result for result in results}


@pytest.mark.slow  # the whole exported AML pipeline, emulated
def test_exported_tree_runs_end_to_end_as_aml_would(tree, tmp_path):
    completed, nodes = emulate(tree, tmp_path / "work")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert list(nodes) == ["sweep", "register", "deploy"]
    # The job Python resolved finetune to the uploaded snapshot only.
    assert "finetune from " in completed.stdout and "/probe/code/finetune/__init__.py (no dist-info)" in completed.stdout

    sweep = nodes["sweep"]
    assert len(sweep["trials"]) == 2 and all(t["status"] in ("completed", "early-terminated") for t in sweep["trials"])
    # Every trial's objective was read back from what training logged through the azureml:// URI.
    assert all(t["val_auc_weighted"] is not None and t["evaluations"] >= 1 for t in sweep["trials"])
    assert sweep["service_calls"].get("mlflow via azureml://", 0) > 0
    # Sampled from sweep.yml's space: the learning rate inside its log-uniform bounds, the batch size a choice.
    for trial in sweep["trials"]:
        assert 1e-5 <= trial["params"]["learning_rate"] <= 1e-4 and trial["params"]["batch_size"] in (16, 32)

    register = nodes["register"]
    assert register["status"] == "completed" and register["detail"].startswith("registered amazon_automotive-sentiment:1")
    assert register["service_calls"]["managed identity token"] >= 1 and register["service_calls"]["blob"] > 0
    deploy = nodes["deploy"]
    assert deploy["status"] == "completed" and deploy["detail"].startswith("succeeded")
    rollout = json.loads(next((tmp_path / "work" / "jobs").glob("*-deploy/outputs/rollout/rollout.json")).read_text())
    predictions = rollout["smoke_test"]["response"]["predictions"]
    assert predictions and all(p["label"] in ("negative", "positive") for p in predictions)
    assert rollout["smoke_test"]["response"]["model"] == {"name": "amazon_automotive-sentiment", "version": "1"}
    assert rollout["promoted"]["version"] == "1"
    assert "node" in completed.stdout and "sweep" in completed.stdout  # the node table
