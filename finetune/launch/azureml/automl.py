"""AutoML NLP text classification, and the step that scores its best model on the test split.

Multi-label data (``dataset.task=multi_label``) gets AutoML's ``text_classification_multilabel`` job, and
``text_classification`` otherwise; the primary metric is :func:`.automl_checks.automl_metric`. Both read the same
MLTables: the multi-label label cell is the Python list literal our prepared splits already hold
(``"['anger', 'joy']"``, ``"[]"``), one of the two formats AutoML NLP documents for multi-label
(https://learn.microsoft.com/azure/machine-learning/how-to-auto-train-nlp-models#multi-label, "Python list with
quotes"), and what Azure/azureml-examples' multi-label example feeds it (its preprocessing.py writes the list
column with pandas, i.e. ``str(list)``, and validation-mltable-folder/valid_data.csv holds ``"['cs.CV', 'cs.LG']"``,
under sdk/python/jobs/automl-standalone-jobs/automl-nlp-text-classification-multilabel-task-paper-categorization/).

AutoML trains on the train MLTable and validates on val; it never sees test. AutoML NLP reports no
test metrics of its own, so the test step loads its best model (the ``best_model`` MLflow output), chooses its
decision rule on val and scores the test split with the project's metric function, as every other candidate is
scored, and packages it as a candidate (candidate.json + the MLflow model) that ships if it wins.

``automl.sweep`` is AutoML NLP's own hyperparameter sweep::

    sampling_algorithm: random            # random | grid | bayesian
    policy: {type: bandit, slack_factor: 0.1, evaluation_interval: 2}
    space:                                # one dict per subspace; a value is fixed or a distribution
      - model_name: {type: choice, values: [bert-base-cased, roberta-base]}
        learning_rate: {type: loguniform, min: 1.0e-5, max: 5.0e-5}
"""

from __future__ import annotations

import ast
import csv
import math
from typing import TYPE_CHECKING, List

from finetune.config.schema import PolicyConfig
from finetune.data.ner import read_prepared
from finetune.launch.azureml.automl_checks import automl_metric
from finetune.launch.azureml.compute import steps_compute
from finetune.launch.azureml.environment import AUTOML_PYTHON, AUTOML_PYTHON_VARIABLE
from finetune.launch.azureml.runtime.step_args import TestAutomlArgs, command_line
from finetune.launch.azureml.sweep import distribution, policy
from finetune.tasks import task_of

if TYPE_CHECKING:
    from finetune.config.schema import DatasetConfig
    from finetune.data import PreparedData
    from finetune.launch.azureml.data import DataRefs
    from finetune.plan.run_plan import RunPlan

TARGET_COLUMN = "label"
BEST_MODEL = "best_model"
TEST_OUTPUT = "candidate"
# AutoML NLP validates its input before training and fails the job on these rules ("Set up AutoML to train a
# natural language processing model", section "Data validation":
# https://learn.microsoft.com/azure/machine-learning/how-to-auto-train-nlp-models#data-validation):
# every task needs at least 50 training samples; training and validation data need the same columns in the
# same order with the same types, unique column names (both hold by construction: data.MLTABLE over our
# text,label CSVs) and at least two unique labels; multi-label data needs the list format (ours, see above)
# and at least one sample with 0 or 2+ labels ("otherwise it should be a multiclass task").
MIN_TRAINING_ROWS = 50
RULES = "AutoML NLP's data validation (learn.microsoft.com/azure/machine-learning/how-to-auto-train-nlp-models)"


def data_problems(prepared: "PreparedData", dataset: "DatasetConfig") -> List[str]:
    """What AutoML NLP would refuse in the prepared splits it gets (train and val), one line each.

    Checked on the split, not on the config: how many rows train gets depends on the classes (each class gives
    val and test at least one row and is rounded on its own; see finetune.data.split).
    """
    rows = prepared.splits["train"]["rows"]
    problems = []
    if prepared.task == "ner":
        return ner_problems(prepared, rows)
    if rows < MIN_TRAINING_ROWS:
        problems.append(
            f"automl=text_classification: {RULES} needs at least {MIN_TRAINING_ROWS} training rows and "
            f"the train split has {rows}; {_more_rows(prepared, dataset)}, or automl=none"
        )
    for split in ("train", "val"):
        present = [label for label, count in prepared.splits[split]["class_counts"].items() if count]
        if len(present) < 2:
            problems.append(
                f"automl=text_classification: {RULES} needs at least two unique labels in the {split} "
                f"split, which has {len(present)} ({', '.join(present) or 'none'}); use more data "
                "or automl=none"
            )
    if prepared.task == "multi_label" and all(count == 1 for count in _labels_per_row(prepared.path("train"))):
        problems.append(
            f"automl=text_classification: {RULES} refuses multi-label data in which every training "
            "text has exactly one label (it is a multiclass task); set dataset.task=single_label"
        )
    return problems


def ner_problems(prepared: "PreparedData", rows: int) -> List[str]:
    """What AutoML NER would refuse: fewer than 50 training sentences, or a token its space-separated CoNLL
    cannot hold (one with whitespace inside)."""
    problems = []
    if rows < MIN_TRAINING_ROWS:
        problems.append(
            f"automl=text_classification: {RULES} needs at least {MIN_TRAINING_ROWS} training sentences "
            f"for NER and the train split has {rows}; use more data, or automl=none"
        )
    for split in ("train", "val"):
        spaced = next(
            (
                token
                for s in read_prepared(prepared.path(split))
                for token in s.tokens
                if any(c.isspace() for c in token)
            ),
            None,
        )
        if spaced is not None:
            problems.append(
                f"automl=text_classification: AutoML NER reads space-separated CoNLL, and the {split} "
                f"split has the token {spaced!r} with whitespace inside; split or join it, or automl=none"
            )
    return problems


def _more_rows(prepared: "PreparedData", dataset: "DatasetConfig") -> str:
    """The fix for too small a train split. A stratified single-label split gives each class's val and test
    share at most ``share + 1`` rows, so this sample leaves train at least MIN_TRAINING_ROWS rows."""
    if dataset.sample is None:
        return "use more data"
    if prepared.task == "multi_label":
        return f"use a larger dataset.sample than {dataset.sample}"
    train_share = 1 - dataset.val_fraction - dataset.test_fraction
    sample = math.ceil((MIN_TRAINING_ROWS + 2 * len(prepared.labels)) / train_share)
    return f"set dataset.sample={sample} or more"


def _labels_per_row(split_file) -> List[int]:
    """How many labels each row of a prepared multi-label split holds (its label cell is a Python list literal)."""
    with open(split_file, newline="", encoding="utf-8") as handle:
        return [len(ast.literal_eval(row[TARGET_COLUMN])) for row in csv.DictReader(handle)]


def text_classification(plan: "RunPlan", data: "DataRefs", *, node: bool = False, **inputs):
    """The AutoML job (``node=True``: a pipeline node exposing ``outputs.best_model``).

    ``inputs`` may bind ``training_data``/``validation_data`` to pipeline inputs (``${{parent.inputs.x}}``
    strings: an Input holding such a path is written as its repr); by default they are the MLTable
    references in ``data``.
    """
    from azure.ai.ml import Input, Output, automl

    config, task = plan.automl, plan.dataset.task
    multi_label = task == "multi_label"
    # The task object names the AutoML NLP job: text_classification, text_classification_multilabel or text_ner.
    job_kind = task_of(task).automl_task
    # text_ner takes no target column: the CoNLL lines hold the tags (automl.text_ner's signature).
    target = {} if job_kind == "text_ner" else {"target_column_name": TARGET_COLUMN}
    job = getattr(automl, job_kind)(
        training_data=inputs.get("training_data") or Input(type="mltable", path=data.tables["train"]),
        validation_data=inputs.get("validation_data") or Input(type="mltable", path=data.tables["val"]),
        **target,
        primary_metric=automl_metric(config, task),
        compute=plan.compute.cluster_name,
        experiment_name=plan.tracking.experiment,
        name="automl" if node else None,
        display_name=(
            f"automl {job_kind.replace('_', ' ')}{' (multi-label)' if multi_label else ''} "
            f"({config.model_name or 'AutoML picks the model'})"
        ),
        tags={"run": plan.name, "dataset": plan.dataset.name, "task": task},
        outputs={BEST_MODEL: Output(type="mlflow_model")} if node else None,
    )
    job.set_limits(
        timeout_minutes=config.timeout_minutes,
        trial_timeout_minutes=config.trial_timeout_minutes,
        max_trials=config.max_trials,
        max_concurrent_trials=config.max_concurrent_trials,
        max_nodes=config.max_nodes,
    )
    job.set_featurization(dataset_language=config.language)
    if config.model_name:
        job.set_training_parameters(model_name=config.model_name)
    if config.sweep:
        _set_sweep(job, config.sweep)
    return job


def _set_sweep(job, sweep: dict) -> None:
    from azure.ai.ml.automl import SearchSpace

    subspaces = sweep.get("space") or []
    if isinstance(subspaces, dict):
        subspaces = [subspaces]
    job.extend_search_space(
        [
            SearchSpace(
                **{name: distribution(value) if isinstance(value, dict) else value for name, value in subspace.items()}
            )
            for subspace in subspaces
        ]
    )
    job.set_sweep(
        sampling_algorithm=sweep.get("sampling_algorithm", "random"),
        early_termination=policy(PolicyConfig(**(sweep.get("policy") or {"type": "none"}))),
    )


def test_step_args(task: str) -> TestAutomlArgs:
    return TestAutomlArgs(
        model="${{inputs.model}}",
        test_file="${{inputs.test}}",
        val_file="${{inputs.val}}",
        labels_file="${{inputs.labels}}",
        settings="${{inputs.settings}}",
        task=task,
        output_dir="${{outputs.%s}}" % TEST_OUTPUT,
    )


def test_step(plan: "RunPlan", code: str, environment):
    """The command that makes AutoML's best model a candidate (``finetune.launch.azureml.runtime.steps test-automl``):
    its decision rule chosen on val, its test metrics, and the candidate folder the register step ships."""
    from azure.ai.ml import Input, Output, command

    return command(
        name="test_automl",
        display_name="test AutoML's best model",
        description="choose the AutoML best model's decision rule on val, score it on test, package it",
        command=command_line(test_step_args(plan.dataset.task)),
        code=code,
        environment=environment,
        compute=steps_compute(plan),
        inputs={
            "model": Input(type="mlflow_model"),
            "test": Input(type="uri_file"),
            "val": Input(type="uri_file"),
            "labels": Input(type="uri_file"),
            "settings": Input(type="uri_file"),
        },
        outputs={TEST_OUTPUT: Output(type="uri_folder")},
        # The step's code runs in the project's env; AutoML's model predicts in AutoML's env of the same image.
        environment_variables={AUTOML_PYTHON_VARIABLE: AUTOML_PYTHON},
    )
