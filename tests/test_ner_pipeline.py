"""NER end to end: `python -m finetune` on the bundled WNUT17 sample with the tiny BERT (data -> train -> CRF ->
select -> register -> local rollout -> report), batch prediction's entities column, and bad NER input ending in
one line, exit 2 and nothing registered."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def finetune(tmp_path: Path, model_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "finetune",
        "search=none",
        "budget=none",  # the epochs as set (tests/test_budget.py covers budgets)
        f"model.path={model_dir}",
        "model.epochs=1",
        "compute.num_threads=1",
        f"output_root={tmp_path}",
        *overrides,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=900, cwd=tmp_path)


@pytest.mark.slow  # a real (tiny) token-classification fine-tune, a CRF grid, a local endpoint
def test_bundled_ner_sample_runs_end_to_end_and_predicts_entities(tmp_path, tiny_model_dir):
    run = finetune(tmp_path, tiny_model_dir, "dataset=wnut17_sample", "run_name=ner")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "ner" / "summary.json").read_text())
    assert summary["data"]["task"] == "ner" and summary["data"]["splits"]["test"]["rows"] == 100
    assert set(summary["candidates"]) == {"finetuned", "crf"}
    assert summary["selection"]["metric"] == "f1_entity"
    for row in summary["selection"]["table"]:
        assert {"f1_entity", "precision_entity", "recall_entity", "f1.person"} <= set(row)
    assert summary["registry"]["version"] == "1"
    rollout = summary["rollout"]
    assert rollout["status"] == "succeeded"
    sent = summary["registry"]["sample_request"]["data"]
    for item, prediction in zip(sent, rollout["smoke_test"]["response"]["predictions"]):
        for entity in prediction["entities"]:
            assert item["text"][entity["start"] : entity["end"]] == entity["text"]
    report = (tmp_path / "ner" / "report.md").read_text()
    assert "### Per entity type (test)" in report and "### Wrong entities by kind (test)" in report
    assert "stray I- tags" in report

    texts = tmp_path / "texts.csv"
    with open(texts, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["id", "text"], [1, "I saw Taylor Swift in London"], [2, "nothing here"]])
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune.predict",
            "--model",
            "wnut17_sample-ner@production",
            "--input",
            str(texts),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [str(row["id"]) for row in rows] == ["1", "2"]  # CSV ids are read as text
    assert all(isinstance(json.loads(row["entities"]), list) for row in rows)


@pytest.mark.slow  # a python -m finetune subprocess per bad input
@pytest.mark.parametrize(
    "content, expected",
    [
        ("Peter\tB-PER\nBlackburn\n\nx\tO\n", "train.conll line 2: malformed CoNLL line"),
        ("Peter\tPERSON\n\nx\tO\n", "train.conll line 1: tag 'PERSON' (token 1) is not O, B-TYPE or I-TYPE"),
    ],
)
def test_bad_ner_input_is_one_line_exit_2_and_nothing_registered(tmp_path, content, expected):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.conll").write_text(content, encoding="utf-8")
    for name in ("dev.conll", "test.conll"):
        (data / name).write_text("Peter\tB-PER\n", encoding="utf-8")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune",
            "dataset=file",
            "dataset.task=ner",
            f"dataset.path={data}",
            "dataset.split_files={train: train.conll, val: dev.conll, test: test.conll}",
            "search=none",
            f"output_root={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    # MLflow announces creating the run's store at INFO before the data stage; the error is one line after it.
    errors = [line for line in run.stderr.splitlines() if "INFO mlflow" not in line]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in run.stderr
    store = tmp_path / "out" / "mlflow.db"
    if store.exists():  # the run's tracking store may exist; its registry must hold no model
        with sqlite3.connect(store) as connection:
            assert connection.execute("select count(*) from registered_models").fetchone()[0] == 0
