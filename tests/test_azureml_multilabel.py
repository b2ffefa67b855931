"""Multi-label data on AML: AutoML's text_classification_multilabel job, the task-dependent plan checks, the
sweep's multi-label objective, and the AutoML test step scoring per-label probabilities."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
import yaml

from amlemu.recorder import build, guard_network
from finetune.errors import ConfigProblems

AML = ["model=bert-base-cased", "search=bandit", "compute=a100", "dry_run=true"]
LABEL_SETS = [["anger"], ["fear"], ["joy"], ["anger", "fear"], ["fear", "joy"], ["anger", "joy"]]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    guard_network(monkeypatch)


def multi_label_file(folder: Path) -> Path:
    """A JSONL file whose label cells are lists: ``dataset.task=auto`` reads it as multi-label."""
    path = folder / "emotions.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": f"text {i} about {' and '.join(labels)}", "label": labels}) + "\n"
            for i, labels in enumerate(LABEL_SETS * 20)
        ),
        encoding="utf-8",
    )
    return path


def multi_label(tmp_path) -> list:
    """Overrides for multi-label data (the bundled reviews are rated, single-label by nature)."""
    return AML + ["dataset=file", f"dataset.path={multi_label_file(tmp_path)}", "dataset.task=multi_label"]


def problems(tmp_path, overrides) -> list:
    with pytest.raises(ConfigProblems) as caught:
        build(overrides, tmp_path)
    return caught.value.problems


# ------------------------------------------------------------------------------------------- plan checks


def test_multi_label_automl_takes_accuracy_alone(tmp_path):
    found = problems(tmp_path, multi_label(tmp_path) + ["automl.primary_metric=AUC_weighted"])
    assert found == [
        "automl.primary_metric=AUC_weighted: AutoML multi-label text classification "
        "(text_classification_multilabel) accepts accuracy (or auto)"
    ]
    for metric in ("accuracy", "Accuracy", "auto"):
        build(multi_label(tmp_path) + [f"automl.primary_metric={metric}"], tmp_path)


def test_automl_metric_auto_is_the_tasks_own(tmp_path):
    from finetune.launch.azureml.automl_checks import automl_metric

    plan = build(AML, tmp_path)
    assert plan.automl.primary_metric == "auto"
    assert automl_metric(plan.automl, "single_label") == "AUC_weighted"
    assert automl_metric(plan.automl, "multi_label") == "accuracy"


def test_multilabel_metrics_are_what_the_sdk_sends():
    """Every member of the SDK's multi-label enum builds a job; only the listed ones survive its schema."""
    from azure.ai.ml import Input, automl
    from azure.ai.ml._restclient.arm_ml_service.models import ClassificationMultilabelPrimaryMetrics

    from finetune.launch.azureml.automl_checks import AUTOML_MULTILABEL_METRICS

    dumped = []
    for member in ClassificationMultilabelPrimaryMetrics:
        job = automl.text_classification_multilabel(
            training_data=Input(type="mltable", path="./t"),
            validation_data=Input(type="mltable", path="./v"),
            target_column_name="label",
            primary_metric=member.name.lower(),
            compute="gpu",
        )
        try:
            job._to_dict()
        except Exception:  # the schema's ValidationError: a metric AML does not take for this task
            continue
        dumped.append(member.name.lower())
    assert dumped == [m.lower() for m in AUTOML_MULTILABEL_METRICS]


def test_micro_objectives_are_multi_label_only(tmp_path):
    found = problems(tmp_path, AML + ["dataset.task=single_label", "search.primary_metric=val_f1_micro"])
    assert len(found) == 1 and found[0].startswith(
        "search.primary_metric=val_f1_micro: training logs it for multi-label data only, and this data is "
        "single-label; use one of val_loss, val_accuracy"
    )
    for metric in ("val_f1_micro", "val_auc_micro", "val_precision_micro", "val_recall_micro", "val_auc_weighted"):
        assert build(multi_label(tmp_path) + [f"search.primary_metric={metric}"], tmp_path)


def test_objective_is_checked_against_the_task_the_plan_decides(tmp_path):
    """``dataset.task=auto`` is decided from the file's first rows before the checks run, on either launcher."""
    lists = ["dataset=file", f"dataset.path={multi_label_file(tmp_path)}", "search.primary_metric=val_f1_micro"]
    # budget=none: the local plan's budget would first calibrate MiniLM on this file (tests/test_budget.py).
    local = ["search=bandit", "dry_run=true", "budget=none"]
    for launcher in (AML, local):
        assert build(launcher + lists, tmp_path).dataset.task == "multi_label"
    found = problems(tmp_path, local + ["search.primary_metric=val_f1_micro"])
    assert found[0].startswith("search.primary_metric=val_f1_micro: training logs it for multi-label data only")


def test_hamming_loss_is_minimised(tmp_path):
    found = problems(tmp_path, multi_label(tmp_path) + ["search.primary_metric=val_hamming_loss"])
    assert found == ["search.primary_metric=val_hamming_loss: lower is better; set search.goal=minimize"]
    build(multi_label(tmp_path) + ["search.primary_metric=val_hamming_loss", "search.goal=minimize"], tmp_path)


def test_the_prepared_task_is_checked_again(tmp_path):
    """A plan checked before its data's task was known is checked again for that task (one line per problem)."""
    from finetune.launch.azureml.checks import with_task

    # A download is read by the data step: only then is task=auto decided.
    download = AML + ["dataset=file", "dataset.url=https://example.invalid/tickets.jsonl"]
    plan = build(download + ["automl.primary_metric=AUC_weighted"], tmp_path)
    assert plan.dataset.task == "auto"
    with pytest.raises(ConfigProblems, match=r"automl.primary_metric=AUC_weighted: AutoML multi-label"):
        with_task(plan, "multi_label")
    assert with_task(plan, "single_label").dataset.task == "single_label"
    micro = build(download + ["search.primary_metric=val_f1_micro"], tmp_path)
    with pytest.raises(ConfigProblems, match="val_f1_micro: training logs it for multi-label data only"):
        with_task(micro, "single_label")
    assert with_task(micro, "multi_label").automl.primary_metric == "auto"


# ------------------------------------------------------------------------------------------- dry run


def test_multi_label_dry_run(capsys, tmp_path):
    """AutoML's multi-label job on the MLTables, a sweep on a multi-label metric, the steps told the task."""
    from azure.ai.ml import load_job

    from finetune.cli.main import main

    data = multi_label_file(tmp_path)
    code = main(
        AML
        + [
            "dataset=file",
            f"dataset.path={data}",
            "search.primary_metric=val_f1_micro",
            f"output_root={tmp_path}",
            "run_name=ml",
        ]
    )
    assert code == 0, capsys.readouterr().err
    folder = tmp_path / "ml" / "aml"
    automl = yaml.safe_load((folder / "automl.yml").read_text())
    assert (automl["type"], automl["task"], automl["target_column_name"], automl["primary_metric"]) == (
        "automl",
        "text_classification_multilabel",
        "label",
        "accuracy",
    )
    assert type(load_job(folder / "automl.yml")).__name__ == "TextClassificationMultilabelJob"
    # AutoML reads each label cell as the Python list literal of the prepared split ("Python list with quotes").
    with (folder / "mltable" / "train" / "train.csv").open(encoding="utf-8", newline="") as handle:
        cells = [row["label"] for row in csv.DictReader(handle)]
    assert cells and all(
        ast.literal_eval(cell) in LABEL_SETS and cell == repr(ast.literal_eval(cell)) for cell in cells
    )

    jobs = yaml.safe_load((folder / "pipeline.yml").read_text())["jobs"]
    assert list(jobs) == ["sweep", "automl", "test_automl", "register", "deploy"]
    assert jobs["sweep"]["objective"] == {"goal": "maximize", "primary_metric": "val_f1_micro"}
    assert "--task multi_label " in jobs["sweep"]["trial"]["command"]
    assert (jobs["automl"]["task"], jobs["automl"]["primary_metric"]) == ("text_classification_multilabel", "accuracy")
    assert "--task multi_label " in jobs["test_automl"]["component"]["command"]
    register = jobs["register"]
    assert "--automl-result ${{inputs.automl_result}}" in register["component"]["command"]
    # Per-label thresholds are chosen on val before the one test evaluation, as the local select stage does.
    assert "--val-file ${{inputs.val}}" in register["component"]["command"]
    assert register["inputs"]["val"] == {"path": "${{parent.inputs.val}}"}
    assert type(load_job(folder / "pipeline.yml").jobs["automl"]).__name__ == "TextClassificationMultilabelJob"
    # The register step selects with the data's task (finetune.registry.registration.select_and_register reads it).
    assert json.loads((folder / "settings.json").read_text())["data"]["task"] == "multi_label"


def test_multi_label_objective_refused_for_single_label_data(capsys, tmp_path):
    from finetune.cli.main import main

    code = main(AML + ["search.primary_metric=val_f1_micro", f"output_root={tmp_path}", "run_name=single"])
    err = capsys.readouterr().err
    assert code != 0
    assert "search.primary_metric=val_f1_micro: training logs it for multi-label data only" in err


# ------------------------------------------------------------------------------------------- test-automl step


@pytest.mark.slow  # trains and scores an MLflow model
def test_test_automl_step_scores_a_multi_label_model(tmp_path, monkeypatch):
    import dataclasses

    import cloudpickle
    import mlflow.sklearn
    import pandas as pd

    from amlemu import automl_standin
    from finetune.data import prepare
    from finetune.launch.azureml.runtime import steps

    plan = build(AML + ["dataset=file", f"dataset.path={multi_label_file(tmp_path)}"], tmp_path)
    prepared = prepare(plan.dataset, tmp_path / "data")
    assert prepared.task == "multi_label"
    frame = pd.read_csv(prepared.train_path, dtype=str, keep_default_na=False)
    sets = [ast.literal_eval(cell) for cell in frame["label"]]
    # AutoML NLP's multi-label wrapper as the emulator's stand-in has it; one classifier per label, the classes
    # in the reverse of the run's label order: the step reorders them.
    model = automl_standin.MultilabelModel(
        {label: automl_standin._classifier(frame["text"], [label in s for s in sets]) for label in prepared.labels},
        ["text"],
    )
    model.classes_ = list(reversed(prepared.labels))
    # By value, as the stand-in does: the step loads it without the emulator on its path.
    cloudpickle.register_pickle_by_value(automl_standin)
    try:
        mlflow.sklearn.save_model(
            model, str(tmp_path / "mlflow_model"), pip_requirements=["scikit-learn"], serialization_format="cloudpickle"
        )
    finally:
        cloudpickle.unregister_pickle_by_value(automl_standin)
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps({"select": dataclasses.asdict(plan.select), "data": prepared.to_dict()}, default=str)
    )
    code = steps.main(
        [
            "test-automl",
            "--model",
            str(tmp_path / "mlflow_model"),
            "--test-file",
            str(prepared.test_path),
            "--val-file",
            str(prepared.path("val")),
            "--labels-file",
            str(prepared.labels_path),
            "--settings",
            str(settings),
            "--task",
            "multi_label",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (result["family"], result["task"], result["rows"]) == (
        "automl",
        "multi_label",
        prepared.splits["test"]["rows"],
    )
    # Each text names its labels: columns in the wrong order would score near chance.
    assert result["test"]["auc_micro"] > 0.9 and result["test"]["f1_micro"] > 0.8
    assert {"hamming_loss", "f1.anger", "recall.joy"} <= set(result["test"])
    # Its per-label thresholds were chosen on val, and its package serves them.
    assert result["decision"]["rule"] == "per_label_thresholds"
    assert json.loads((tmp_path / "out" / "model" / "candidate.json").read_text())["decision"] == result["decision"]
