"""``python -m finetune ... compute=<aml option>``: dry runs write the YAML tree, multirun one per plan,
no credentials end in one line within seconds, and nothing Azure loads for --help or local plans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from amlemu.recorder import guard_network
from finetune.cli.main import main

REFERENCE = ["model=bert-base-cased", "search=bandit", "compute=a100"]
TREE = [
    "automl.yml",
    "code/finetune/train/entry.py",
    "compute.yml",
    "conda-serving.yml",
    "conda-steps.yml",
    "conda-training.yml",
    "data/finetune-amazon_automotive-labels.yml",
    "data/finetune-amazon_automotive-test.yml",
    "data/finetune-amazon_automotive-train-mltable.yml",
    "data/finetune-amazon_automotive-train.yml",
    "data/finetune-amazon_automotive-val-mltable.yml",
    "data/finetune-amazon_automotive-val.yml",
    "deployment.yml",
    "endpoint.yml",
    "environment.yml",
    "mltable/train/MLTable",
    "mltable/train/train.csv",
    "mltable/val/MLTable",
    "mltable/val/val.csv",
    "pipeline.yml",
    "predict.yml",
    "score/score.py",
    "settings.json",
    "steps-compute.yml",
    "sweep.yml",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


def test_dry_run_writes_the_yaml_tree_and_prints_plan_and_cost(capsys, tmp_path):
    code = main(REFERENCE + ["dry_run=true", f"output_root={tmp_path}", "run_name=ref"])
    out = capsys.readouterr().out
    assert code == 0
    folder = tmp_path / "ref" / "aml"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert [f for f in TREE if f not in files] == []
    assert not any("__pycache__" in f or f.startswith("code/finetune/data_files") for f in files)
    # A dry run leaves the export alone, and the export is whole: the plan (in settings.json, without
    # workspace or machine paths) and the data its assets upload.
    assert [p.name for p in (tmp_path / "ref").iterdir()] == ["aml"]
    assert json.loads((folder / "settings.json").read_text())["config"]["model"]["name"] == "bert-base-cased"
    assert (folder / "prepared" / "train.csv").is_file()
    data_asset = yaml.safe_load((folder / "data" / "finetune-amazon_automotive-train.yml").read_text())
    assert (folder / "data" / data_asset["path"]).resolve() == (folder / "prepared" / "train.csv").resolve()
    assert "launcher azureml" in out
    assert "stages   data -> search -> automl -> select -> register -> deploy" in out
    assert (
        "sweep: 6 x 2 h (search.limits.trial_timeout) x 1 node(s) = 12 node-hours = 12 GPU-hours "
        "x $3.67/h (Standard_NC24ads_A100_v4) = $44.08" in out
    )
    assert "steps (register, test_automl, deploy on Standard_DS3_v2)" in out
    assert "training environment: mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:latest + torch cu126" in out
    assert "dry run: nothing submitted" in out


def test_multirun_writes_one_tree_per_plan(capsys, tmp_path):
    code = main(
        ["-m", "model=bert-base-cased,distilbert-base-cased", "compute=a100", "dry_run=true", f"output_root={tmp_path}"]
    )
    assert code == 0, capsys.readouterr().err
    trees = sorted(tmp_path.glob("*/aml/pipeline.yml"))
    assert len(trees) == 2 and trees[0].parent.parent != trees[1].parent.parent
    # The training node is `sweep` under search=bandit (the default) and `train` under search=none.
    jobs = [yaml.safe_load(p.read_text())["jobs"] for p in trees]
    models = sorted((j.get("sweep") or j["train"])["inputs"]["model"] for j in jobs)
    assert models == ["bert-base-cased", "distilbert-base-cased"]


def test_no_credentials_fail_fast_in_one_line(capsys, tmp_path, monkeypatch):
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "AZURE_USERNAME",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "MSI_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no CLI login, no token cache
    monkeypatch.setenv("PATH", str(tmp_path))  # no az, azd or pwsh to ask
    started = time.monotonic()
    code = main(
        REFERENCE
        + [
            f"output_root={tmp_path}",
            "workspace.subscription_id=sub",
            "workspace.resource_group=rg",
            "workspace.workspace_name=ws",
        ]
    )
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: no usable Azure credentials: run `az login`")
    assert "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET" in err and "dry_run=true" in err
    assert "Traceback" not in err
    assert elapsed < 10
    assert not list(tmp_path.glob("*/plan.yaml"))  # nothing prepared or written before the credentials were there


def test_missing_workspace_is_a_plan_problem(capsys, tmp_path, monkeypatch):
    for name in (
        "AZUREML_SUBSCRIPTION_ID",
        "AZURE_SUBSCRIPTION_ID",
        "AZUREML_RESOURCE_GROUP",
        "AZUREML_WORKSPACE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(REFERENCE + [f"output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config (3 problems): workspace.subscription_id=None")


def test_help_and_local_plans_import_no_azure(tmp_path):
    code = (
        "import sys; from finetune.cli.main import main; "
        f"rc = main(['--help']) or main(['dry_run=true', 'budget=none', 'output_root={tmp_path}', 'run_name=x']); "
        "print('AZURE', sorted(m for m in sys.modules if m.startswith('azure'))); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "AZURE []" in out


def test_aml_planning_imports_no_azure_until_the_launcher_runs(tmp_path):
    code = (
        "import sys; from finetune.cli.main import compose; from finetune.plan.build import build_plan; "
        f"o = ['compute=a100', 'model=bert-base-cased', 'dry_run=true', 'output_root={tmp_path}']; "
        "build_plan(compose(o, {}), o, 'x'); import finetune.launch.azureml; "
        "print('AZURE', sorted(m for m in sys.modules if m.startswith('azure')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "AZURE []" in out


@pytest.mark.slow  # the reference AML dry run, timed
def test_timed_reference_dry_run(tmp_path):
    """The reference scenario's dry run as a user runs it (a fresh interpreter), timed for the report."""
    started = time.monotonic()
    # A user's shell: azure-ai-ml records the recorder's custom cloud in AZUREML_CURRENT_CLOUD when an earlier test
    # of this process makes an MLClient, and a fresh interpreter could not resolve that cloud.
    env = {key: value for key, value in os.environ.items() if key != "AZUREML_CURRENT_CLOUD"}
    result = subprocess.run(
        [sys.executable, "-m", "finetune", *REFERENCE, "dry_run=true", f"output_root={tmp_path}", "run_name=timed"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        env=env,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no SDK chatter
    print(f"reference dry run: {elapsed:.1f} s wall")
    assert elapsed < 60
