"""The training contract (finetune/config/spec.py) is the one definition of every training setting: the config
schema, the sweep space, the plan checks, the command line, the AML command and the docs all follow it."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import schema as config
from finetune.config import spec
from finetune.errors import ConfigProblems

ROOT = Path(__file__).resolve().parents[1]
HYPERPARAMETERS = [item.name for item in dataclasses.fields(spec.Hyperparameters)]


def test_config_sections_are_the_spec_sections():
    assert issubclass(config.ModelConfig, spec.Hyperparameters)
    assert config.TrainConfig is spec.TrainingOptions
    assert issubclass(config.ComputeConfig, spec.SpeedOptions)
    for section, schema in ((spec.Hyperparameters, config.ModelConfig), (spec.SpeedOptions, config.ComputeConfig)):
        defaults = {item.name: item.default for item in dataclasses.fields(schema)}
        for item in dataclasses.fields(section):
            assert defaults[item.name] == item.default


def test_every_hyperparameter_is_searchable_with_its_declared_range():
    from finetune.search.space import SEARCHABLE, space_problems

    assert list(SEARCHABLE) == HYPERPARAMETERS + ["model"]
    for name in HYPERPARAMETERS:
        legal = spec.legal_range(spec.Hyperparameters, name)
        outside = legal.low - 1 if legal.low is not None else legal.high + 1
        problems = space_problems({name: {"type": "choice", "values": [outside]}}, "random", [])
        assert problems and f"must be {legal.describe()}" in problems[0], (name, problems)


def test_the_command_line_has_one_flag_per_field_and_round_trips():
    parser = spec.build_parser()
    flags = {action.option_strings[0] for action in parser._actions if action.dest != "help"}
    assert flags == {spec.flag(item.name) for item in dataclasses.fields(spec.TrainArgs)}
    args = spec.TrainArgs(
        "t.csv",
        "v.csv",
        "l.json",
        "m",
        "out",
        learning_rate=1e-5,
        early_stopping_patience=0,
        tf32=False,
        trial_number=3,
    )
    assert spec.parse_args(spec.to_argv(args)) == args


def test_every_training_flag_is_described_by_its_declaration():
    """``python -m finetune.train --help`` says what each flag does, with the words declared in finetune/config/spec.py."""
    completed = subprocess.run(
        [sys.executable, "-m", "finetune.train", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    # argparse wraps lines at spaces and after hyphens: compare without whitespace.
    shown = "".join(completed.stdout.split())
    for item in dataclasses.fields(spec.TrainArgs):
        assert item.metadata["help"], f"{item.name}: declare what it does (help=...)"
        assert (
            f"{spec.flag(item.name)}{item.name.upper()}" in shown
            or f"{spec.flag(item.name)}true|false" in shown
            or f"{spec.flag(item.name)}{{" in shown
        ), item.name
        assert "".join(item.metadata["help"].split()) in shown, item.name


def test_plan_checks_follow_the_declared_ranges_and_choices(tmp_path):
    from finetune.cli import main as cli
    from finetune.plan.build import build_plan

    overrides = [
        f"output_root={tmp_path}",
        "model.warmup_ratio=1.0",
        "compute.precision=fp4",
        "train.evals_per_epoch=0",
    ]
    with pytest.raises(ConfigProblems) as raised:
        build_plan(cli.compose(overrides, {}), overrides, "t")
    assert set(raised.value.problems) == {
        "model.warmup_ratio=1.0: must be in [0, 1)",
        "compute.precision=fp4: use one of auto, fp32, bf16, fp16",
        "train.evals_per_epoch=0: must be >= 1",
    }


def test_the_aml_command_takes_every_searchable_hyperparameter_as_an_input(tmp_path):
    from finetune.cli import main as cli
    from finetune.launch.azureml.command import arguments, hyperparameter_inputs
    from finetune.plan.build import build_plan

    overrides = [
        f"output_root={tmp_path}",
        "compute=cpu",
        "automl=none",
        "endpoint=none",
        "dry_run=true",
        "workspace.subscription_id=s",
        "workspace.resource_group=g",
        "workspace.workspace_name=w",
    ]
    plan = build_plan(cli.compose(overrides, {}), overrides, "t")
    assert list(hyperparameter_inputs(plan)) == HYPERPARAMETERS
    argv = arguments(plan)
    for name in HYPERPARAMETERS:
        assert argv[argv.index(spec.flag(name)) + 1] == "${{inputs.%s}}" % name


# Lists of these names that are not a definition of them.
NOT_DEFINITIONS = {
    "finetune/plan/view.py": "the keys the short plan view always shows (any changed hyperparameter shows too)",
    "finetune/launch/azureml/automl_checks.py": "AML AutoML NLP's own parameter names, AML's vocabulary",
}


def test_no_other_module_lists_the_hyperparameters():
    """A second list of hyperparameter names is how the eight copies began: none outside finetune/config/spec.py."""
    names = set(HYPERPARAMETERS)
    listed = []
    for path in (ROOT / "finetune").rglob("*.py"):
        if str(path.relative_to(ROOT)) in ("finetune/config/spec.py", *NOT_DEFINITIONS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                strings = {item.value for item in items if isinstance(item, ast.Constant)}
                if len(strings & names) >= 4:
                    listed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not listed, f"hyperparameter names listed outside finetune/config/spec.py: {listed}"


def test_docs_table_is_generated_from_the_spec():
    path = ROOT / "docs" / "contracts.md"
    text = path.read_text(encoding="utf-8")
    begin, end = "<!-- spec:begin -->\n", "<!-- spec:end -->"
    head, rest = text.split(begin)
    table, tail = rest.split(end)
    if os.environ.get("FINETUNE_UPDATE_DOCS"):
        path.write_text(head + begin + spec.reference_table() + end + tail, encoding="utf-8")
        table = spec.reference_table()
    assert table == spec.reference_table(), "run with FINETUNE_UPDATE_DOCS=1 and review docs/contracts.md"


def test_every_declared_choice_is_checked_at_plan_time_and_declared_once(tmp_path):
    """``setting(choices=...)`` is the one declaration of a string's legal values (stage checks import the same
    tuples from finetune.config.schema): the plan check refuses anything else for every such key."""
    from finetune.cli import main as cli
    from finetune.config import ranges
    from finetune.plan.build import build_plan

    overrides = [f"output_root={tmp_path}", "dry_run=true"]
    plan = build_plan(cli.compose(overrides, {}), overrides, "t")
    assert {
        "compute.target",
        "automl.engine",
        "endpoint.target",
        "search.goal",
        "dataset.source",
        "model.source",
        "search.sampling",
        "endpoint.runtime",
    } <= set(ranges.CHOICES)
    for key, allowed in ranges.CHOICES.items():
        section, _, name = key.rpartition(".")
        owner = plan
        for part in section.split("."):
            owner = getattr(owner, part)
        original = getattr(owner, name)
        setattr(owner, name, "bogus")
        try:
            shown = ", ".join("null" if choice is None else choice for choice in allowed)
            assert f"{key}=bogus: use one of {shown}" in ranges.check_values(plan), key
        finally:
            setattr(owner, name, original)
