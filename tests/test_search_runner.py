"""The local sweep end to end with the tiny BERT: real ``python -m finetune.train`` trials, concurrency, a
crashing trial, SIGKILL of the whole sweep and resume, and the reporter that trials call."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from finetune.cli.main import compose, expand
from finetune.plan.build import build_plan
from finetune.plan.results import SweepResult
from finetune.search.reporting import TrialReporter
from finetune.search.runner import run_sweep

REPO = Path(__file__).resolve().parent.parent
TRIAL_KEYS = {
    "number",
    "params",
    "status",
    "best_value",
    "values",
    "epochs_run",
    "steps",
    "duration_s",
    "stopped_at_interval",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Balanced sentiment splits from the bundled reviews, in the prepared-data layout (docs/contracts.md)."""
    folder = tmp_path_factory.mktemp("data")
    with open(REPO / "finetune" / "data_files" / "automotive_reviews.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = {
        "positive": [r["review_body"] for r in rows if int(r["star_rating"]) >= 4],
        "negative": [r["review_body"] for r in rows if int(r["star_rating"]) <= 2],
    }
    for split, (start, stop) in {"train": (0, 24), "val": (24, 40), "test": (40, 48)}.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for label in ("negative", "positive"):
                writer.writerows([text, label] for text in texts[label][start:stop])
    (folder / "labels.json").write_text(json.dumps(["negative", "positive"]))
    return SimpleNamespace(
        **{f"{s}_path": folder / f"{s}.csv" for s in ("train", "val", "test")}, labels_path=folder / "labels.json"
    )


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def overrides(root: Path, model_dir: Path, tracking_uri: str, *extra: str) -> list:
    # budget=none: these tests hold the runner to the limits they set (tests/test_budget.py covers budgets).
    return [
        "budget=none",
        f"output_root={root}",
        "run_name=sweep-test",
        f"model.path={model_dir}",
        "model.epochs=2",
        "model.max_length=32",
        "compute.device=cpu",
        f"tracking.uri={tracking_uri}",
        *extra,
    ]


def make_plan(args: list):
    [(hydra_overrides, space)] = expand(args, multirun=False)
    return build_plan(compose(hydra_overrides, space), hydra_overrides, "sweep-test")


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, tiny_model_dir, data, tracking_uri):
    """One sweep shared by the tests below: a 4-point grid, Bandit, 2 trials at a time, one trial crashing."""
    root = tmp_path_factory.mktemp("sweep")
    # slack_factor 0: a trial behind the best one at the same interval stops, so the pruner has work to do.
    plan = make_plan(
        overrides(
            root,
            tiny_model_dir,
            tracking_uri,
            "search=grid",
            "~search.space.batch_size",
            "search.space.learning_rate=choice(2e-5,5e-5,1e-4,2e-4)",
            "search.policy.type=bandit",
            "search.policy.slack_factor=0",
            "search.limits.max_total_trials=4",
            "search.limits.max_concurrent_trials=2",
            "compute.num_threads=2",
        )
    )
    plan.search.space["learning_rate"]["values"][-1] = -1.0  # past validation: the optimizer refuses it
    from finetune.registry.tracking import start_pipeline_run

    tags = {"dataset.name": "fixture", "finetune.plan.run_plan": plan.name}
    parent = start_pipeline_run(plan, tags)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_sweep(plan, data, root / "sweep", pipeline_run=(parent, tags))
    return SimpleNamespace(
        sweep=result.to_dict(), result=result, dir=root / "sweep", plan=plan, printed=printed.getvalue(), parent=parent
    )


@pytest.mark.slow  # a real sweep (its module fixture)
def test_sweep_runs_trials_concurrently_stops_laggards_and_keeps_the_best_model(sweep_run, tracking_uri):
    sweep = sweep_run.sweep
    assert set(sweep) == {"sampling", "policy", "primary_metric", "goal", "trials", "best", "compute"}
    assert (sweep["sampling"], sweep["policy"]["type"], sweep["primary_metric"]) == (
        "grid",
        "bandit",
        "val_auc_weighted",
    )
    trials = sweep["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert sorted(t["params"]["learning_rate"] for t in trials) == [-1.0, 2e-5, 5e-5, 1e-4]  # each point once
    for trial in trials:
        assert TRIAL_KEYS <= set(trial)
        if trial["status"] == "completed":
            assert len(trial["values"]) == 2 and trial["epochs_run"] == pytest.approx(2.0)
            assert trial["best_value"] == max(trial["values"]) and trial["stopped_at_interval"] is None
        elif trial["status"] == "early_terminated":
            # The policy may act at the last evaluation too (as AML's may cancel a job at its last report), when
            # a concurrent trial's better value arrived first: which one reports first is the machine's timing.
            assert len(trial["values"]) == trial["stopped_at_interval"] <= 2
            assert trial["epochs_run"] == pytest.approx(trial["stopped_at_interval"], abs=0.05)
        else:
            assert trial["params"]["learning_rate"] == -1.0

    best = sweep["best"]
    # The best trial's training result comes with the sweep (read once, by the sweep).
    assert sweep_run.result.best_training.model_dir == best["model_dir"]
    completed = [t for t in trials if t["status"] == "completed"]
    assert best["trial"] == max(completed, key=lambda t: t["best_value"])["number"]
    assert best["value"] == best["val"]["auc_weighted"] and best["params"] == trials[best["trial"]]["params"]
    # sweep.json is the section; the typed result reads back from it (the best training is not in it).
    assert json.loads((sweep_run.dir / "sweep.json").read_text()) == sweep
    assert SweepResult.from_dict(sweep) == dataclasses.replace(sweep_run.result, best_training=None)
    assert (Path(best["model_dir"]) / "config.json").exists() and Path(best["result_file"]).exists()
    for trial in trials:
        assert (sweep_run.dir / f"trial-{trial['number']:03d}" / "model").exists() == (trial["number"] == best["trial"])

    compute = sweep["compute"]
    assert compute["trial_epochs"] == pytest.approx(sum(t["epochs_run"] or 0 for t in trials))
    assert compute["wall_seconds"] < compute["trial_seconds"]  # two trials ran at a time
    assert json.loads((sweep_run.dir / "sweep.json").read_text()) == sweep

    assert sweep_run.printed.count("[sweep ") == 4
    assert "best val_auc_weighted" in sweep_run.printed and f"best: trial {best['trial']}" in sweep_run.printed
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep_run.plan.tracking.experiment)
    # Every trial, the crashed one included, is a child of the invocation's pipeline run, with its tags.
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{sweep_run.parent}'")
    assert sorted(r.info.run_name for r in children) == [f"sweep-test-trial-{n}" for n in range(4)]
    assert all(r.data.tags["dataset.name"] == "fixture" for r in children)


@pytest.mark.slow  # the real sweep fixture
def test_a_crashing_trial_is_marked_failed_and_the_sweep_goes_on(sweep_run):
    [crashed] = [t for t in sweep_run.sweep["trials"] if t["params"]["learning_rate"] == -1.0]
    assert crashed["status"] == "failed" and "Invalid learning rate" in crashed["reason"]
    assert "failed (exit code 1: ValueError: Invalid learning rate" in sweep_run.printed
    assert sum(t["status"] != "failed" for t in sweep_run.sweep["trials"]) == 3


@pytest.mark.slow  # a real sweep of tiny trials
def test_trial_timeout_kills_a_trial_and_the_sweep_timeout_stops_launching(
    tmp_path, tiny_model_dir, data, tracking_uri, capsys
):
    plan = make_plan(
        overrides(
            tmp_path,
            tiny_model_dir,
            tracking_uri,
            "search=random",
            "search.limits.timeout=1",
            "search.limits.trial_timeout=2",
            "search.limits.max_total_trials=3",
        )
    )
    sweep = run_sweep(plan, data, tmp_path / "sweep").to_dict()
    [trial] = sweep["trials"]  # killed at 2 s, after the sweep's 1 s: nothing else was started
    assert trial["status"] == "failed" and trial["reason"] == "timeout: killed after trial_timeout=2 s"
    assert "sweep timeout (1 s) reached: 2 trial(s) not started" in capsys.readouterr().out
    assert sweep["best"] is None


SWEEP_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
from finetune.cli.main import compose, expand
from finetune.plan.build import build_plan
from finetune.search.runner import run_sweep

args, data, sweep_dir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
plan = build_plan(compose(args, {}), args, "sweep-test")
run_sweep(plan, SimpleNamespace(**{k: Path(v) for k, v in data.items()}), sweep_dir)
"""


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow  # about 45 s of CPU (a sweep process plus three trials): beyond the quick set's budget
def test_a_killed_sweep_resumes_keeping_finished_trials_and_retrying_the_interrupted_one(
    tmp_path, tiny_model_dir, data, tracking_uri
):
    args = overrides(
        tmp_path,
        tiny_model_dir,
        tracking_uri,
        "search=random",
        "model.epochs=1",
        "search.limits.max_total_trials=3",
        "compute.num_threads=1",
    )
    sweep_dir = tmp_path / "sweep"
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    paths = {k: str(v) for k, v in vars(data).items()}
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(args), json.dumps(paths), str(sweep_dir)],
        cwd=REPO,
        start_new_session=True,
    )
    try:
        _wait_for(sweep_dir / "trial-001" / "train.log", process)  # trial 0 finished, trial 1 running
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'study.db'}")
    before = optuna.load_study(study_name="sweep-test", storage=storage).get_trials()
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    finished_result = sweep_dir / "trial-000" / "result.json"
    finished_at = finished_result.stat().st_mtime

    sweep = run_sweep(make_plan(args), data, sweep_dir).to_dict()

    assert [t["number"] for t in sweep["trials"]] == [0, 2, 3]  # trial 1 replaced by its retry, 3 in all
    assert all(t["status"] == "completed" for t in sweep["trials"])
    assert finished_result.stat().st_mtime == finished_at  # not rerun
    assert sweep["trials"][1]["params"] == before[1].user_attrs["params"]
    assert sweep["trials"][0]["params"] == before[0].user_attrs["params"]
    assert len({t["params"]["learning_rate"] for t in sweep["trials"]}) == 3  # the resumed sampler does not replay

    again = run_sweep(make_plan(args), data, sweep_dir).to_dict()  # a finished sweep reruns nothing
    assert [t["number"] for t in again["trials"]] == [0, 2, 3]


def test_reporter_applies_the_studys_policy_and_records_where_it_stopped(tmp_path):
    storage_url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage_url, direction="maximize")
    study.set_user_attr(
        "policy",
        {
            "type": "bandit",
            "slack_factor": 0.1,
            "slack_amount": None,
            "evaluation_interval": 1,
            "delay_evaluation": 2,
            "truncation_percentage": None,
            "exclude_finished_jobs": False,
        },
    )
    study.set_user_attr("primary_metric", "val_auc_weighted")
    study.set_user_attr("goal", "maximize")
    leader = study.ask()
    leader.report(0.9, 10)
    leader.report(0.9, 20)
    study.tell(leader, 0.9)
    trial = study.ask()

    reporter = TrialReporter(storage_url, "s", trial.number, "val_auc_weighted", "maximize")
    assert reporter.report(0.5, 10) is False  # below 0.9 / 1.1, but the policy starts at interval 2
    assert reporter.report(0.6, 20) is True
    attrs = study.trials[trial.number].user_attrs
    assert (attrs["stopped_at_interval"], attrs["stopped_at_step"]) == (2, 20)
    with pytest.raises(ValueError, match="optimises val_auc_weighted"):
        TrialReporter(storage_url, "s", trial.number, "val_loss", "minimize")


@pytest.mark.slow  # the real sweep fixture
def test_every_trial_reports_its_progress_for_the_sweep_line(sweep_run):
    for trial in sweep_run.sweep["trials"]:
        if trial["status"] == "completed":
            record = json.loads((sweep_run.dir / f"trial-{trial['number']:03d}" / "progress.json").read_text())
            assert record["step"] == record["total"] > 0 and "val_auc_weighted" in record
