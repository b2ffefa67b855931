"""The command line: help, dry runs, multirun expansion and one-line user errors with exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from finetune.cli.main import expand, main


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
        "import sys; from finetune.cli.main import main; "
        f"rc = main(['--help']) or main(['dry_run=true', 'output_root={tmp_path}', 'run_name=x']); "
        "heavy = [m for m in ('torch', 'transformers', 'azure.ai.ml', 'mlflow', 'flaml', 'optuna') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_dry_run_prints_a_short_grouped_plan_and_leaves_nothing_behind(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=plan-only", "model.learning_rate=3e-5"
    )
    assert code == 0
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
    for group in ("data:", "model:", "search:", "compute:", "endpoint:"):
        assert f"\n{group}\n" in out
    assert re.search(r"\n \* learning_rate +3e-05\n", out) and re.search(r"\n   batch_size +16\n", out)
    # AML-only keys stay out of a local plan; the full table is one key away.
    for aml_only in ("low_priority", "instance_type", "liveness_initial_delay_s", "vm_size"):
        assert aml_only not in out
    assert len(out.splitlines()) < 60 and "dry run" in out
    code, full, _ = run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "plan_view=full")
    assert code == 0 and "endpoint.liveness_initial_delay_s" in full and len(full.splitlines()) > 80


def test_an_aml_plan_shows_the_cluster_and_not_the_local_threads(capsys, tmp_path):
    from finetune.plan import view as plan_view

    overrides = ["compute=a100", "model=bert-base-cased", f"output_root={tmp_path}", "dry_run=true"]
    from finetune.cli.main import compose
    from finetune.plan.build import build_plan

    plan = build_plan(compose(overrides, {}), overrides, "aml")
    text = plan_view.short(plan, ["compute.name"])
    assert " * name              a100" in text and "vm_size" in text and "instance_type" in text
    assert "num_threads" not in text and "time_budget_s" not in text


def test_multirun_builds_one_plan_per_value():
    jobs = expand(["model=minilm-l6,bert-base-cased", "seed=1"], multirun=True)
    assert [overrides for overrides, _ in jobs] == [["model=minilm-l6", "seed=1"], ["model=bert-base-cased", "seed=1"]]


def test_multirun_dry_run_prints_one_plan_each(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "-m", "seed=1,2", "dry_run=true", f"output_root={tmp_path}")
    assert code == 0
    assert out.count("launcher local") == 2 and " * seed  1" in out and " * seed  2" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["model.learning_rate=-1"], "model.learning_rate=-1.0: must be > 0"),
        (["model.batch_size=abc"], "model.batch_size"),
        (["model=nope"], "Could not find 'model/nope'"),
        (["dataset.val_fraction=0.5"], "the split fractions must sum to 1"),
        (["select.metric=f2"], "select.metric=f2: unknown"),
        (["seed=1,2"], "-m/--multirun"),
        (["--verbose"], "unknown option --verbose: did you mean --version?"),
        (["+modle=bert"], "modle: unknown setting; did you mean model?"),
        (["+model.learning_rat=1"], "did you mean model.learning_rate?"),
        (["automl.kind=local"], "automl.kind is now automl.engine: write automl.engine=local"),
        (["endpoint.kind=none"], "endpoint.kind is now endpoint.target: write endpoint.target=none"),
        (["+launcher.wait=true"], "launcher.wait is now submit.wait: write +submit.wait=true"),
        (["hydra.job.chdir=true"], "finetune never changes the working directory"),
        (["hydra.run.dri=x"], "did you mean hydra.run.dir?"),
        (["hydra.verbose=true"], "uses only hydra.run.dir, hydra.sweep.dir, hydra.searchpath"),
        (["plan_view=long"], "plan_view=long: use short or full"),
        (["--cfg", "jobs"], "--cfg jobs: use one of job, hydra, all"),
        (["-cd", "/nonexistent/conf"], "-cd /nonexistent/conf: no such folder"),
        (["experiment=nope"], "Could not find 'experiment/nope'"),
        (["model=bert-base-cased"], "set model.path=DIR to a local copy or use model=minilm-l6"),
        (["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no model folder there"),
        (["dataset.label_column=stars"], "set exactly one"),
        (["train.class_weights=inverse"], "train.class_weights=inverse: use one of auto, balanced, none"),
        (["train.early_stopping_patience=-1"], "train.early_stopping_patience=-1: must be >= 0"),
        (["select.decision_metric=auc_weighted"], "select.decision_metric=auc_weighted: unknown or not a metric"),
        (["select.decision_metric=f1_micro"], "select.decision_metric=f1_micro: unknown or not a metric"),
        (["model.learning_rate=${nope}"], "model.learning_rate: Interpolation key 'nope' not found"),
        (["dataset.path=${oc.env:FINETUNE_NOPE}"], "dataset.path: Environment variable 'FINETUNE_NOPE' not found"),
        (["--cfg", "job", "dataset.path=${oc.env:FINETUNE_NOPE}"], "Environment variable 'FINETUNE_NOPE' not found"),
        # output_root= comes from the test itself: two ways to name one directory, one would be ignored.
        (["hydra.run.dir=elsewhere/mine"], "hydra.run.dir=elsewhere/mine and output_root="),
        (
            ["hydra.run.dir=elsewhere/mine", "run_name=other"],
            "give either hydra.run.dir=DIR or output_root and run_name",
        ),
        (["-m", "hydra.sweep.dir=elsewhere", "seed=1,2"], "hydra.sweep.dir=elsewhere and output_root="),
        (
            ["dataset=goemotions_sample", "select.decision_metric=accuracy"],
            "select.decision_metric=accuracy: unknown or not a metric of decided labels for multi-label data",
        ),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FINETUNE_NOPE", raising=False)
    code, _, err = run_cli(capsys, *args, f"output_root={tmp_path}", "dry_run=true")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not any(tmp_path.iterdir()), "a rejected plan must leave nothing behind"


def test_all_problems_are_reported_at_once(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "model.learning_rate=0", "model.warmup_ratio=2", "dataset.test_fraction=0.3", f"output_root={tmp_path}"
    )
    assert code == 2
    assert "3 problems" in err
    for key in ("model.learning_rate", "model.warmup_ratio", "split fractions"):
        assert key in err


def test_python_dash_m_exit_code_and_stderr(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "finetune", "model.epochs=-2", f"output_root={tmp_path}"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() == "error: invalid config (1 problem): model.epochs=-2.0: must be > 0"
    assert "Traceback" not in completed.stderr


def test_sweep_grammar_adds_a_new_search_dimension_and_a_dict_replaces_one(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        "--cfg",
        "job",
        "search=bandit",
        "search.space.epochs=choice(1,2)",
        "search.space.learning_rate={type:uniform,min:1e-5,max:1e-4}",
    )
    assert code == 0, err
    space = yaml.safe_load(out)["search"]["space"]
    assert space["epochs"] == {"type": "choice", "values": [1, 2]}
    assert space["learning_rate"] == {"type": "uniform", "min": 1e-5, "max": 1e-4}


def test_unknown_column_of_your_own_file_lists_the_real_columns(capsys, tmp_path):
    data = tmp_path / "tickets.csv"
    data.write_text("body,queue\nprinter jammed,it\nrefund please,billing\n")
    code, _, err = run_cli(
        capsys,
        "dataset=file",
        f"dataset.path={data}",
        "dataset.text_column=text",
        f"output_root={tmp_path / 'out'}",
        "dry_run=true",
    )
    assert code == 2
    assert "dataset.text_column=text" in err and "body" in err and "queue" in err


@pytest.mark.slow  # a real run up to its data stage
def test_a_label_column_with_one_class_fails_before_training(capsys, tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"review {i},good\n" for i in range(20)))
    code, _, err = run_cli(
        capsys, "dataset=file", f"dataset.path={data}", "search=none", f"output_root={tmp_path / 'out'}", "run_name=one"
    )
    assert code == 2
    assert "one class" in err or "1 class" in err, err
    assert not (tmp_path / "out" / "one" / "data").exists()


def test_multirun_with_a_run_name_gives_each_plan_its_own_directory(capsys, tmp_path):
    code, out, err = run_cli(capsys, "-m", "seed=1,2", "run_name=pair", "dry_run=true", f"output_root={tmp_path}")
    assert code == 0, err
    assert f"run    * pair-0 -> {tmp_path / 'pair-0'}" in out and f"run    * pair-1 -> {tmp_path / 'pair-1'}" in out


def test_a_missing_data_file_is_one_line_naming_the_path(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "dataset=file",
        f"dataset.path={tmp_path / 'nope.csv'}",
        f"output_root={tmp_path / 'out'}",
        "dry_run=true",
    )
    assert code == 2 and err.count("\n") == 1
    assert f"dataset.path={tmp_path / 'nope.csv'}" in err and "no such file" in err


def test_help_lists_hydra_flags_and_experiments(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for flag in (
        "--cfg job|hydra|all",
        "--info",
        "-cd, --config-dir",
        "-cn, --config-name",
        "--version",
        "hydra.run.dir=DIR",
        "plan_view=full",
    ):
        assert flag in out
    for experiment in ("quick", "aml_reference", "gpu"):
        assert f"\n  {experiment} " in out


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("finetune 0.") and "Hydra 1.3" in out


def test_cfg_job_prints_the_composed_config_and_all_adds_hydra(capsys):
    code, out, _ = run_cli(capsys, "--cfg", "job", "model.epochs=3")
    assert code == 0
    job = yaml.safe_load(out)
    assert job["model"]["epochs"] == 3 and job["automl"]["engine"] == "local" and "hydra" not in job
    code, out, _ = run_cli(capsys, "--cfg=all")
    assert code == 0 and "runtime" in yaml.safe_load(out)["hydra"]


def test_info_shows_the_search_path_and_chosen_options(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--info", "-cd", str(tmp_path), "experiment=quick")
    assert code == 0
    assert "pkg://finetune.conf" in out and f"file://{tmp_path}" in out
    assert "experiment   quick" in out and "search       none" in out


@pytest.mark.parametrize("name", ["quick", "aml_reference", "gpu", "goemotions"])
def test_shipped_experiments_compose_over_the_defaults(name, tmp_path, monkeypatch):
    from finetune.cli.main import compose
    from finetune.plan.build import build_plan

    overrides = [f"experiment={name}", f"output_root={tmp_path}"]
    cfg = compose(overrides, {})
    expected = {
        "quick": ("minilm-l6", "local", "none", 300),
        "aml_reference": ("bert-base-cased", "a100", "random", None),
        "gpu": ("bert-base-cased", "local", "random", None),
        "goemotions": ("minilm-l6", "local", "none", None),
    }[name]
    assert (cfg.model.name, cfg.compute.name, cfg.search.sampling, cfg.dataset.sample) == expected
    if name == "goemotions":
        assert (cfg.dataset.name, cfg.dataset.task, cfg.model.epochs, cfg.select.decision_metric) == (
            "goemotions",
            "multi_label",
            5,
            "f1_macro",
        )
        # The measured recipe runs as measured: under the default budget it would be fitted down to one epoch.
        assert cfg.budget.name == "none"
    if name == "quick":
        assert build_plan(cfg, overrides, "q").stages == ["data", "train", "automl", "select", "register", "deploy"]


def test_a_config_dir_of_your_own_adds_options_and_a_primary_config(capsys, tmp_path):
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "experiment").mkdir()
    (conf / "model" / "tiny.yaml").write_text("name: tiny\nsource: path\npath: /models/tiny\nepochs: 5\n")
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\nseed: 11\ndataset:\n  sample: 50\n")
    (conf / "team.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 7\nrun_name: team\n")
    code, out, err = run_cli(capsys, "--cfg", "job", "-cd", str(conf), "model=tiny", "experiment=mine")
    assert code == 0, err
    job = yaml.safe_load(out)
    assert job["model"]["path"] == "/models/tiny" and job["seed"] == 11
    code, out, err = run_cli(capsys, "--cfg", "job", f"hydra.searchpath=[file://{conf}]", "model=tiny")
    assert code == 0 and yaml.safe_load(out)["model"]["epochs"] == 5, err
    code, out, err = run_cli(capsys, "--cfg", "job", f"--config-dir={conf}", "-cn", "team", "experiment=mine")
    assert code == 0, err
    job = yaml.safe_load(out)
    # The user's primary config comes after its defaults (experiment included), as in any Hydra app.
    assert (job["run_name"], job["seed"], job["dataset"]["sample"], job["model"]["name"]) == (
        "team",
        7,
        50,
        "minilm-l6",
    )


def test_a_config_file_setting_a_renamed_key_is_told_the_new_name(capsys, tmp_path):
    (tmp_path / "automl").mkdir()
    (tmp_path / "automl" / "old.yaml").write_text("kind: local\ntime_budget_s: 30\n")
    code, _, err = run_cli(capsys, "-cd", str(tmp_path), "automl=old", "dry_run=true")
    assert code == 2
    assert err == "error: automl.kind is now automl.engine: rename it in your config file\n"


def test_hydra_run_dir_is_the_run_directory(capsys, tmp_path):
    code, out, err = run_cli(
        capsys, f"hydra.run.dir={tmp_path / 'runs' / 'mine'}", "hydra.job.chdir=false", "dry_run=true"
    )
    assert code == 0, err
    assert f"run    * mine -> {tmp_path / 'runs' / 'mine'}" in out
    code, out, err = run_cli(capsys, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "seed=1,2", "dry_run=true")
    assert code == 0, err
    assert out.count(f"-> {tmp_path / 'sweep'}/") == 2


def test_ctrl_c_names_the_command_that_resumes_the_run(capsys, tmp_path, monkeypatch):
    import finetune.launch

    def interrupted(plan):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune.launch, "run_plan", interrupted)
    code, _, err = run_cli(
        capsys, "search=none", "search.space.epochs=choice(1,2)", f"output_root={tmp_path}", "run_name=first"
    )
    assert code == 2  # a space without a sweep is refused before anything runs
    code, _, err = run_cli(capsys, "search=bandit", "search.space.epochs=choice(1,2)", f"output_root={tmp_path}")
    assert code == 130
    command = err.strip().splitlines()[-1].strip().split()
    assert command[:4] == ["python", "-m", "finetune", "search=bandit"]
    assert "'search.space.epochs=choice(1,2)'" in command and f"output_root={tmp_path}" in command
    assert command[-1].startswith("run_name=20") and len(command) == 7
