"""Several pipelines at once on one new output_root: the MLflow store, the registry and the production alias
stay consistent, and production ends on the best model by the selection rule, not the last to finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.system import locks

RUNS = 4


def pipeline(tmp_path: Path, model_dir: Path, index: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "finetune",
        "search=none",
        "automl=none",
        "endpoint=none",
        f"model.path={model_dir}",
        "dataset.sample=100",
        "model.max_length=16",
        "model.epochs=1",
        "compute.num_threads=1",
        f"seed={index}",
        f"run_name=c{index}",
        f"output_root={tmp_path / 'root'}",
    ]
    log = open(tmp_path / f"c{index}.log", "wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


@pytest.mark.slow  # four full local pipelines
def test_four_pipelines_at_once_on_a_new_output_root(tmp_path, tiny_model_dir):
    processes = [pipeline(tmp_path, tiny_model_dir, index) for index in range(RUNS)]
    codes = [process.wait(timeout=900) for process in processes]
    logs = {index: (tmp_path / f"c{index}.log").read_text(errors="replace") for index in range(RUNS)}
    assert codes == [0] * RUNS, "\n\n".join(log[-2500:] for log in logs.values())

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'root' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_experiments(filter_string="name = 'finetune'")) == 1
    summaries = [json.loads((tmp_path / "root" / f"c{i}" / "summary.json").read_text()) for i in range(RUNS)]
    test_auc = {s["run"]["name"]: s["selection"]["test"]["finetuned"]["auc_weighted"] for s in summaries}
    versions = client.search_model_versions("name='amazon_automotive-sentiment'")
    registered = {s["run"]["name"]: s["registry"]["version"] for s in summaries if s["registry"].get("version")}
    # Every registration is a version of its own (or the same content found again), none lost or doubled.
    assert {str(v.version) for v in versions} == set(registered.values())
    production = client.get_model_version_by_alias("amazon_automotive-sentiment", "production")
    best = max(test_auc.values())
    winners = [name for name, version in registered.items() if version == str(production.version)]
    assert winners and all(test_auc[name] == best for name in winners), (test_auc, registered, production.version)
    # A run that registered but lost the recheck or came later says why production was kept.
    for summary in summaries:
        assert summary["selection"]["decision"] in ("register", "keep_production")


def test_a_lock_held_elsewhere_says_who_holds_it(tmp_path):
    path = tmp_path / "x.lock"
    with locks.hold(path, owner="training"):
        script = f"from finetune.system import locks\nwith locks.hold({str(path)!r}, wait=False): pass"
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0 and f"pid {os.getpid()} (training)" in result.stderr
    with locks.hold(path, wait=False):  # released on leaving the block
        pass


def test_lock_files_sit_beside_the_store(tmp_path):
    assert locks.store_lock_path(f"sqlite:///{tmp_path}/mlflow.db", "store") == tmp_path / ".mlflow.db.store.lock"
    assert locks.store_lock_path(str(tmp_path / "mlruns"), "store") == tmp_path / "mlruns" / ".store.lock"
    assert locks.store_lock_path("http://tracking:5000", "store").parent.name == "locks"


@pytest.mark.slow  # two registrations with real models
def test_promotion_rechecks_a_production_that_moved_since_selection(tmp_path):
    """Something outside this run's lock (another machine on the same store, a hand-set alias) moved production
    between selection and promotion: the selection rule is applied again against the new production."""
    import csv
    import dataclasses
    from types import SimpleNamespace

    from finetune.launch.local import _recheck
    from finetune.plan.results import SelectionResult, SelectionRow
    from finetune.registry import model_registry as registry
    from finetune.selection import choose
    from finetune.selection.decisions import Verdict
    from test_serve_support import LABELS, TEXTS, make_automl_candidate

    test_csv = tmp_path / "test.csv"
    with open(test_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((text, LABELS[1 - i % 2]) for i, text in enumerate(TEXTS))
    good = make_automl_candidate(tmp_path / "good")
    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", "recheck-model"
    version = registry.register(good, name, uri, {}, {"data": [{"text": "x"}]})["version"]
    registry.promote(name, version, uri)

    def scores(candidate):
        return choose.evaluate({"c": candidate}, test_csv, LABELS)["c"]["test"]

    plan = SimpleNamespace(
        select=SimpleNamespace(registered_model_name=name, metric="auc_weighted", margin=0.0),
        tracking=SimpleNamespace(uri=uri),
    )
    data = SimpleNamespace(test_path=test_csv, labels=LABELS, task="single_label")
    worse = {**scores(good), "auc_weighted": 0.25}
    selection = SelectionResult(
        metric="auc_weighted",
        task="single_label",
        margin=0.0,
        production=None,
        table=[SelectionRow("automl", "automl", worse)],
        winner="automl",
        verdict=Verdict.REGISTER,
        reason="no production yet",
    )
    rechecked = _recheck(plan, data, selection, "99", tmp_path / "recheck")
    assert not rechecked.promotable
    assert rechecked.recheck == {
        "production_version": version,
        "decision": "keep_production",
        "reason": rechecked.recheck["reason"],
    }
    assert "production moved" in rechecked.reason and selection.recheck is None  # a new result, not a rewrite

    better = {**scores(good), "auc_weighted": 1.5}  # beats any real score
    selection = dataclasses.replace(selection, table=[SelectionRow("automl", "automl", better)])
    assert _recheck(plan, data, selection, "99", tmp_path / "recheck2").promotable
    # Production where selection saw it: no second look.
    unchanged = dataclasses.replace(selection, production_version={"version": version})
    assert _recheck(plan, data, unchanged, "99", tmp_path / "unused") is unchanged
    assert not (tmp_path / "unused").exists()
