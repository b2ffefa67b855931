"""The command line: help, dry runs, multirun expansion and one-line user errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.cli import expand, main


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_groups_and_options(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for group in ("dataset", "model", "search", "compute", "automl", "endpoint"):
        assert f"  {group}" in out
    assert "minilm-l6*" in out


def test_help_and_dry_run_do_not_import_torch_or_transformers(tmp_path):
    code = (
        "import sys; from finetune.cli import main; "
        f"rc = main(['--help']) or main(['dry_run=true', 'output_root={tmp_path}', 'run_name=x']); "
        "heavy = [m for m in ('torch', 'transformers', 'azure.ai.ml', 'mlflow', 'flaml', 'optuna') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_dry_run_writes_plan_and_trains_nothing(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=plan-only")
    assert code == 0
    run_dir = tmp_path / "plan-only"
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["model"]["name"] == "minilm-l6" and plan["launcher"] == "local"
    assert (run_dir / "plan.yaml").exists()
    assert not (run_dir / "summary.json").exists()
    assert "model.learning_rate" in out and "dry run" in out


def test_multirun_builds_one_plan_per_value():
    jobs = expand(["model=minilm-l6,bert-base-cased", "seed=1"], multirun=True)
    assert [overrides for overrides, _ in jobs] == [["model=minilm-l6", "seed=1"], ["model=bert-base-cased", "seed=1"]]


def test_multirun_dry_run_writes_one_plan_each(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "-m", "seed=1,2", "dry_run=true", f"output_root={tmp_path}")
    assert code == 0
    plans = sorted(tmp_path.glob("*/plan.json"))
    assert [json.loads(p.read_text())["seed"] for p in plans] == [1, 2]


@pytest.mark.parametrize(
    "args,message",
    [
        (["model.learning_rate=-1"], "model.learning_rate=-1.0: must be > 0"),
        (["model.batch_size=abc"], "model.batch_size"),
        (["model=nope"], "Could not find 'model/nope'"),
        (["dataset.val_fraction=0.5"], "the split fractions must sum to 1"),
        (["select.metric=f2"], "select.metric=f2: unknown"),
        (["seed=1,2"], "-m/--multirun"),
        (["--verbose"], "unknown option --verbose"),
        (["model=bert-base-cased"], "set model.path=DIR to a local copy or use model=minilm-l6"),
        (["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no model folder there"),
        (["dataset.label_column=stars"], "set exactly one"),
        (["train.class_weights=inverse"], "train.class_weights=inverse: use one of auto, balanced, none"),
        (["train.early_stopping_patience=-1"], "train.early_stopping_patience=-1: must be >= 0"),
        (["select.decision_metric=auc_weighted"], "select.decision_metric=auc_weighted: unknown or not a metric"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, *args, f"output_root={tmp_path}", "dry_run=true")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not any(tmp_path.iterdir()), "a rejected plan must leave nothing behind"


def test_all_problems_are_reported_at_once(capsys, tmp_path):
    code, _, err = run_cli(capsys, "model.learning_rate=0", "model.warmup_ratio=2", "dataset.test_fraction=0.3",
                           f"output_root={tmp_path}")
    assert code == 2
    assert "3 problems" in err
    for key in ("model.learning_rate", "model.warmup_ratio", "split fractions"):
        assert key in err


def test_python_dash_m_exit_code_and_stderr(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "finetune", "model.epochs=-2", f"output_root={tmp_path}"],
                               capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert completed.returncode == 2
    assert completed.stderr.strip() == "error: invalid config (1 problem): model.epochs=-2.0: must be > 0"
    assert "Traceback" not in completed.stderr


def test_sweep_grammar_adds_a_new_search_dimension_and_a_dict_replaces_one(capsys, tmp_path):
    code, _, err = run_cli(capsys, "search=bandit", "search.space.epochs=choice(1,2)",
                           "search.space.learning_rate={type:uniform,min:1e-5,max:1e-4}",
                           "dry_run=true", f"output_root={tmp_path}", "run_name=space")
    assert code == 0, err
    space = json.loads((tmp_path / "space" / "plan.json").read_text())["search"]["space"]
    assert space["epochs"] == {"type": "choice", "values": [1, 2]}
    assert space["learning_rate"] == {"type": "uniform", "min": 1e-5, "max": 1e-4}


def test_unknown_column_of_your_own_file_lists_the_real_columns(capsys, tmp_path):
    data = tmp_path / "tickets.csv"
    data.write_text("body,queue\nprinter jammed,it\nrefund please,billing\n")
    code, _, err = run_cli(capsys, "dataset=file", f"dataset.path={data}", "dataset.text_column=text",
                           f"output_root={tmp_path / 'out'}", "dry_run=true")
    assert code == 2
    assert "dataset.text_column=text" in err and "body" in err and "queue" in err


def test_a_label_column_with_one_class_fails_before_training(capsys, tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"review {i},good\n" for i in range(20)))
    code, _, err = run_cli(capsys, "dataset=file", f"dataset.path={data}", "search=none",
                           f"output_root={tmp_path / 'out'}", "run_name=one")
    assert code == 2
    assert "one class" in err or "1 class" in err, err
    assert not (tmp_path / "out" / "one" / "data").exists()


def test_multirun_with_a_run_name_gives_each_plan_its_own_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "-m", "seed=1,2", "run_name=pair", "dry_run=true", f"output_root={tmp_path}")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair-0", "pair-1"]
    assert json.loads((tmp_path / "pair-1" / "plan.json").read_text())["seed"] == 2


def test_a_missing_data_file_is_one_line_naming_the_path(capsys, tmp_path):
    code, _, err = run_cli(capsys, "dataset=file", f"dataset.path={tmp_path / 'nope.csv'}",
                           f"output_root={tmp_path / 'out'}", "dry_run=true")
    assert code == 2 and err.count("\n") == 1
    assert f"dataset.path={tmp_path / 'nope.csv'}" in err and "no such file" in err
