"""AutoML NLP's documented data rules, refused before anything is exported or spent (issue 24, defect 3).

The rules are those of "Set up AutoML to train a natural language processing model", Data validation
(https://learn.microsoft.com/azure/machine-learning/how-to-auto-train-nlp-models#data-validation): at least 50
training samples, at least two unique labels, multi-label data with at least one sample of 0 or 2+ labels.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from amlemu.recorder import guard_network
from finetune.cli import main as cli


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


def run(args, tmp_path, capsys) -> tuple:
    code = cli.main(["compute=a100", "dry_run=true", f"output_root={tmp_path / 'out'}", "run_name=r", *args])
    return code, capsys.readouterr().err.strip().splitlines()


def write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body", "tags"])
        writer.writerows(rows)
    return path


@pytest.mark.slow  # exports an AML tree for the suggested sample
def test_a_sample_too_small_for_automl_is_refused_in_one_line(tmp_path, capsys):
    import re

    code, err = run(["dataset.sample=60"], tmp_path, capsys)
    assert code == 2 and len(err) == 1, err
    assert "at least 50 training rows" in err[0] and "the train split has 48" in err[0] and "automl=none" in err[0]
    assert not (tmp_path / "out" / "r" / "aml").exists()
    # The sample the line names is enough; without AutoML the small one is fine.
    suggested = re.search(r"dataset\.sample=(\d+) or more", err[0]).group(1)
    code, err = run([f"dataset.sample={suggested}"], tmp_path, capsys)
    assert code == 0, err
    code, err = run(["dataset.sample=60", "automl=none"], tmp_path, capsys)
    assert code == 0, err


def test_a_small_file_is_refused_when_its_train_split_is_known(tmp_path, capsys):
    rows = [
        (f"ticket {i} about {'billing' if i % 2 else 'shipping'}", "billing" if i % 2 else "shipping")
        for i in range(60)
    ]
    data = write_csv(tmp_path / "tickets.csv", rows)
    code, err = run(
        ["dataset=file", f"dataset.path={data}", "dataset.text_column=body", "dataset.label_column=tags"],
        tmp_path,
        capsys,
    )
    assert code == 2 and len(err) == 1, err
    assert "at least 50 training rows" in err[0] and "the train split has 48" in err[0]
    assert not (tmp_path / "out" / "r" / "aml").exists()


def test_multi_label_data_with_one_label_per_text_is_refused(tmp_path, capsys):
    labels = ("anger", "joy", "fear")
    rows = [(f"comment {i} full of {labels[i % 3]}", labels[i % 3]) for i in range(200)]
    data = write_csv(tmp_path / "comments.csv", rows)
    args = [
        "dataset=file",
        f"dataset.path={data}",
        "dataset.text_column=body",
        "dataset.label_column=tags",
        "dataset.task=multi_label",
        "dataset.label_separator=|",
    ]
    code, err = run(args, tmp_path, capsys)
    assert code == 2 and len(err) == 1, err
    assert "exactly one label" in err[0] and "dataset.task=single_label" in err[0]
    # One text with two labels makes it multi-label data AutoML takes.
    rows[0] = (rows[0][0], "anger|joy")
    write_csv(data, rows)
    code, err = run(args, tmp_path, capsys)
    assert code == 0, err
