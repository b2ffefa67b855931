"""Plan-time value checks: every number has a range, every enum a set, every name that becomes a path a
pattern; a bad value ends as one line (exit code 2) before anything is written or run."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from finetune.cli.main import main
from finetune.config import schema
from finetune.config.ranges import RANGES


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


HOSTILE = [
    # (override, the key the one line must name)
    ("model.epochs=inf", "model.epochs=inf"),
    ("model.weight_decay=nan", "model.weight_decay=nan"),
    ("model.learning_rate=-inf", "model.learning_rate=-inf"),
    ("search.policy.slack_factor=nan", "search.policy.slack_factor=nan"),
    ("dataset.positive_min_rating=nan", "dataset.positive_min_rating=nan"),
    ("endpoint.port=70000", "endpoint.port=70000"),
    ("endpoint.port=-1", "endpoint.port=-1"),
    ("seed=-1", "seed=-1"),
    ("seed=99999999999", "seed=99999999999"),
    ("dataset.seed=-3", "dataset.seed=-3"),
    ("search.seed=-3", "search.seed=-3"),
    ("train.logging_steps=0", "train.logging_steps=0"),
    ("train.evals_per_epoch=0", "train.evals_per_epoch=0"),
    ("endpoint.target=bogus", "endpoint.target=bogus"),
    ("automl.engine=bogus", "automl.engine=bogus"),
    ("compute.target=moon", "compute.target=moon"),
    ("search.goal=sideways", "search.goal=sideways"),
    ("search.primary_metric=val_nonsense", "search.primary_metric=val_nonsense"),
    ("endpoint.start_timeout_s=0", "endpoint.start_timeout_s=0"),
    ("endpoint.max_batch_items=0", "endpoint.max_batch_items=0"),
    ("endpoint.max_body_bytes=0", "endpoint.max_body_bytes=0"),
    ("endpoint.step_requests=0", "endpoint.step_requests=0"),
    ("endpoint.max_error_rate=2", "endpoint.max_error_rate=2"),
    ("endpoint.ramp=[50,20,100]", "endpoint.ramp=[50, 20, 100]"),
    ("endpoint.ramp=[10,50]", "endpoint.ramp=[10, 50]"),
    ("endpoint.auth_mode=none", "endpoint.auth_mode=none"),
    ("endpoint.host=0.0.0.0", "endpoint.host=0.0.0.0"),
    ("endpoint.name=../x", "endpoint.name='../x'"),
    ("endpoint.target=managed", "endpoint.target=managed"),
    ("automl.engine=text_classification", "automl.engine=text_classification"),
    ("automl.time_budget_s=0", "automl.time_budget_s=0"),
    ("select.registered_model_name=", "select.registered_model_name=''"),
    ("select.registered_model_name=a/b", "select.registered_model_name='a/b'"),
    ("select.margin=-0.1", "select.margin=-0.1"),
    ("select.margin=nan", "select.margin=nan"),
    ("run_name=..", "run_name='..'"),
    ("run_name=../x", "run_name='../x'"),
    ("run_name=a/b", "run_name='a/b'"),
    ("run_name=.hidden", "run_name='.hidden'"),
    ("tracking.experiment=", "tracking.experiment=''"),
    ("dataset.sample=5", "dataset.sample=5"),
    ("model.max_length=1", "model.max_length=1"),
    ("model.max_length=100000", "model.max_length=100000"),
    ("compute.num_threads=-2", "compute.num_threads=-2"),
    ("tracking.uri=foo://bar", "tracking.uri=foo://bar"),
    ("tracking.uri=sqlite://x.db", "tracking.uri=sqlite://x.db"),
    ("dataset.text_column=", "dataset.text_column=: no such column"),
    ("+model.learnng_rate=1", "model.learnng_rate: unknown setting; did you mean model.learning_rate?"),
    (
        "+endpoint.allow_remote_host=true",
        "endpoint.allow_remote_host: unknown setting; did you mean endpoint.allow_remote?",
    ),
    ("train.telemetry_interval_s=0", "train.telemetry_interval_s=0"),
]


@pytest.mark.parametrize("override,named", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_bad_value_is_one_line_at_plan_time(capsys, tmp_path, override, named):
    root = tmp_path / "out"
    code, _, err = run_cli(capsys, "search=none", "dry_run=true", f"output_root={root}", "run_name=r", override)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert named in err
    assert not root.exists(), "nothing is written for an invalid plan"


def test_every_problem_at_once(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "search=none",
        "dry_run=true",
        f"output_root={tmp_path}",
        "endpoint.port=70000",
        "model.epochs=inf",
        "seed=-1",
    )
    assert code == 2 and "(3 problems)" in err


def test_output_root_under_a_file_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "dry_run=true", f"output_root={blocker}/sub", "run_name=r")
    assert code == 2 and "is a file, not a folder" in err and err.count("\n") == 1


def test_an_override_without_a_key_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "=3")
    assert code == 2 and err.count("\n") == 1 and "=3" in err


def test_max_length_beyond_the_encoder_positions(capsys, tmp_path, tiny_model_dir):
    # The tiny BERT has 256 position embeddings. budget=none: a budget would calibrate each max_length first.
    args = (
        "search=none",
        "budget=none",
        "dry_run=true",
        f"output_root={tmp_path}",
        "run_name=r",
        f"model.path={tiny_model_dir}",
    )
    assert run_cli(capsys, *args, "model.max_length=256")[0] == 0
    code, _, err = run_cli(capsys, *args, "model.max_length=257")
    assert code == 2 and "has 256 positions" in err
    code, _, err = run_cli(
        capsys,
        "search=random",
        "budget=none",
        "dry_run=true",
        f"output_root={tmp_path}",
        "run_name=s",
        f"model.path={tiny_model_dir}",
        "search.space.max_length=choice(128,512)",
    )
    assert code == 2 and "search.space.max_length" in err


def test_a_remote_host_only_when_allowed(capsys, tmp_path):
    code, _, err = run_cli(
        capsys,
        "dry_run=true",
        f"output_root={tmp_path}",
        "run_name=r",
        "endpoint.host=0.0.0.0",
        "endpoint.allow_remote=true",
    )
    assert code == 0, err


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        kind = hints[item.name]
        optional = typing.get_origin(kind) is typing.Union
        inner = [a for a in typing.get_args(kind) if a is not type(None)] if optional else [kind]
        if dataclasses.is_dataclass(inner[0]):
            yield from _numeric_fields(inner[0], f"{prefix}{item.name}.")
        elif inner[0] in (int, float):
            yield f"{prefix}{item.name}"
        elif typing.get_origin(inner[0]) in (list, typing.List) and typing.get_args(inner[0])[0] in (int, float):
            yield f"{prefix}{item.name}[]"


def test_every_numeric_setting_has_a_range():
    missing = [key for key in _numeric_fields(schema.Config) if key not in RANGES]
    assert not missing, f"declare a Range next to {missing} (finetune.config.spec.setting)"


def test_a_run_name_naming_someone_elses_folder_is_refused(capsys, tmp_path):
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "data").mkdir()
    (tmp_path / "Documents" / "data" / "taxes.csv").write_text("1,2\n")
    code, _, err = run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=Documents")
    assert code == 2 and "not a finetune run's" in err
    assert sorted(p.name for p in (tmp_path / "Documents").rglob("*")) == ["data", "taxes.csv"]
    # A run folder (it has plan.json) may be reused: that is how a run is resumed.
    assert run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=again")[0] == 0
    assert run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=again")[0] == 0


def test_more_concurrent_trials_than_cores_is_refused_locally(capsys, tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    code, _, err = run_cli(
        capsys,
        "search=random",
        "dry_run=true",
        f"output_root={tmp_path}",
        "run_name=r",
        f"search.limits.max_total_trials={cores * 4}",
        f"search.limits.max_concurrent_trials={cores * 4}",
    )
    assert code == 2 and f"this machine's {cores} CPU cores" in err


def test_an_aml_dry_runs_folder_counts_as_a_run(capsys, tmp_path):
    # An AML dry run leaves only aml/ (no plan.json); running the same plan for real must not be refused.
    (tmp_path / "ref" / "aml").mkdir(parents=True)
    (tmp_path / "ref" / "aml" / "settings.json").write_text("{}")
    assert run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=ref")[0] == 0
    (tmp_path / "ref" / "aml" / "settings.json").unlink()
    assert run_cli(capsys, "dry_run=true", f"output_root={tmp_path}", "run_name=ref")[0] == 2
