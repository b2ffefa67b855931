"""The pipeline steps' command lines, declared once: what each job builder writes, the step parses back."""

from __future__ import annotations

import dataclasses
import re
import shlex

import pytest

from amlemu.recorder import build, guard_network
from finetune.launch.azureml import automl, deploy, register
from finetune.launch.azureml.runtime.step_args import MODULE, RegisterArgs, command_line, parse

ENVIRONMENT = "azureml:finetune-steps:1"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


@pytest.mark.parametrize("dataset, task", [("amazon_automotive", "single_label"), ("goemotions_sample", "multi_label")])
def test_every_builders_command_parses_back_into_its_declared_arguments(tmp_path, dataset, task):
    plan = build(["compute=a100", "dry_run=true", f"dataset={dataset}", f"dataset.task={task}"], tmp_path)
    built = [
        (register.register_step(plan, "code", ENVIRONMENT, automl=True), register.step_args(automl=True)),
        (register.register_step(plan, "code", ENVIRONMENT, automl=False), register.step_args(automl=False)),
        (deploy.deploy_step(plan, "code", ENVIRONMENT), deploy.step_args()),
        (automl.test_step(plan, "code", ENVIRONMENT), automl.test_step_args(plan.dataset.task)),
    ]
    for job, declared in built:
        words = shlex.split(job.command)
        assert words[:3] == ["python", "-m", MODULE]
        parsed = parse(words[3:])
        assert parsed == declared, job.name
        # Every placeholder names one of the job's own inputs or outputs, and every input is handed to the step.
        placeholders = [
            re.fullmatch(r"\$\{\{(inputs|outputs)\.(\w+)\}\}", str(value))
            for value in dataclasses.asdict(parsed).values()
            if value is not None and "${{" in str(value)
        ]
        assert all(placeholders), job.command
        assert {m[2] for m in placeholders if m[1] == "inputs"} == set(job.inputs), job.name
        assert {m[2] for m in placeholders if m[1] == "outputs"} == set(job.outputs), job.name
    assert parse(shlex.split(built[-1][0].command)[3:]).task == task


def test_an_unset_optional_flag_is_left_out_and_a_value_must_be_one_word():
    args = RegisterArgs(finetuned="m", test_file="t.csv", labels_file="l.json", settings="s.json", output_dir="o")
    line = command_line(args)
    assert "--val-file" not in line and "--automl-result" not in line
    assert parse(shlex.split(line)[3:]) == args
    with pytest.raises(ValueError, match="one word"):
        command_line(dataclasses.replace(args, test_file="my tests.csv"))


def test_a_step_refuses_a_missing_flag_and_an_unknown_task(capsys):
    with pytest.raises(SystemExit) as missing:
        parse(["deploy", "--settings", "s.json", "--output-dir", "o"])
    assert missing.value.code == 2 and "--model-ref" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(
            [
                "test-automl",
                "--model",
                "m",
                "--test-file",
                "t",
                "--val-file",
                "v",
                "--labels-file",
                "l",
                "--settings",
                "s",
                "--output-dir",
                "o",
                "--task",
                "ner-ish",
            ]
        )
    assert "invalid choice: 'ner-ish'" in capsys.readouterr().err
