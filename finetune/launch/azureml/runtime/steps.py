"""What the pipeline's own steps run on AML: ``python -m finetune.launch.azureml.runtime.steps <step> ...``.

- ``test-automl``: make AutoML's best model (its MLflow output) a candidate like the others: its decision rule
  chosen on val with the select settings (:func:`finetune.selection.rules.choose_rule`), its test metrics at that rule
  (:func:`finetune.selection.choose.test_at_rule`), and a candidate folder (``candidate.json`` naming the MLflow model in
  ``mlflow_model/``) that the register step ships. AutoML NLP models load only in AutoML's runtime
  (``azureml-automl-dnn-nlp``), whose Python and pins this package does not support; the step runs in AutoML's
  image (:data:`.environment.AUTOML_IMAGE`) under the project's own env, and the model loads in a small script run
  by the interpreter of AutoML's env, which the job names in ``FINETUNE_AUTOML_PYTHON`` (this interpreter when the
  variable is unset: a model that loads here, e.g. outside AML). The single- and the multi-label model wrappers
  of azureml-automl-dnn-nlp answer alike: ``classes_`` (the multi-label one's are its MultiLabelBinarizer's)
  and ``predict_proba(DataFrame)``, n_rows x n_classes (softmax rows; for multi-label a sigmoid per label),
  while the multi-label ``predict`` returns tuples of label names at a 0.5 threshold, which says nothing about
  ranking; so the step reads ``predict_proba`` for both tasks and lets the metric function decide. AutoML's
  ``text_ner`` model tags the test sentences instead and is scored by the entity metric (:mod:`.automl_ner`).
- ``register``: :func:`finetune.registry.registration.select_and_register`, the local launcher's rule, over an
  :class:`.AmlRegistry`: the Production version is downloaded and re-scored, ``select.margin`` holds, the
  winner is registered once per content with the same tags, packaged with score.py whichever candidate won.
- ``deploy``: :func:`finetune.serve.rollout.rollout` of the registered model with an :class:`.AmlEndpoint`,
  then the version becomes Production (``model_ref.json`` in its output says so). An AutoML winner serves in
  its own MLflow model's environment (:func:`.deploy.model_environment`), the fine-tuned one in the plan's.

The workspace comes from the variables AML sets in every job and the credential is the compute's
managed identity: nothing secret, and no workspace coordinates, travel as job inputs.
Each step writes one JSON file into its output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from finetune.config.schema import EndpointConfig, SelectConfig
from finetune.data import read_targets
from finetune.errors import UserError

# The module, not its names: tests replace deployment_name there to pin deployment names.
from finetune.launch.azureml import deploy as deploy_builders
from finetune.launch.azureml.environment import AUTOML_PYTHON_VARIABLE, environment
from finetune.launch.azureml.runtime.automl_ner import ner_candidate_result
from finetune.launch.azureml.runtime.endpoint import AmlEndpoint
from finetune.launch.azureml.runtime.registry import AmlRegistry
from finetune.launch.azureml.runtime.step_args import RegisterArgs, TestAutomlArgs, parse
from finetune.launch.azureml.runtime.step_results import RegisteredChoice, StepRollout
from finetune.launch.azureml.workspace import from_job_environment
from finetune.registry.registration import select_and_register
from finetune.selection.choose import FINETUNED, test_at_rule
from finetune.selection.decisions import DecisionSettings, Verdict
from finetune.selection.rules import choose_rule
from finetune.serve.entry_scripts import task_entry_script
from finetune.serve.export import export_candidate
from finetune.serve.rollout import ModelRef, RolloutError, rollout
from finetune.tasks.ner import NER_TASK

RESULT = "result.json"
MODEL_REF = "model_ref.json"
ROLLOUT = "rollout.json"
CANDIDATE_DIR = "model"  # where finetune.train puts the model inside its output folder, and test-automl its package
AUTOML_MLFLOW_DIR = "mlflow_model"  # AutoML's MLflow model inside that package

# Runs in the AutoML model's environment (Python 3.10, pandas 1.5, numpy 1.23), which has mlflow, pandas and
# numpy but not this package.
PREDICT_SCRIPT = """\
import json, sys
import mlflow
import numpy as np
import pandas as pd

model_dir, texts_file, proba_file, classes_file = sys.argv[1:5]
try:
    import mlflow.sklearn
    model = mlflow.sklearn.load_model(model_dir)
except Exception:
    model = mlflow.pyfunc.load_model(model_dir).unwrap_python_model()
texts = json.load(open(texts_file, encoding="utf-8"))
np.save(proba_file, np.asarray(model.predict_proba(pd.DataFrame({"text": texts})), dtype=np.float64))
json.dump([str(c) for c in getattr(model, "classes_", [])], open(classes_file, "w", encoding="utf-8"))
"""


# ---------------------------------------------------------------------------------------------- clients


def job_client():
    """An MLClient for the workspace this job runs in, authenticated as the compute's managed identity."""
    from azure.ai.ml import MLClient
    from azure.identity import ManagedIdentityCredential

    workspace = from_job_environment()
    # A user-assigned identity is named by this variable; unset, the system-assigned identity answers.
    credential = ManagedIdentityCredential(client_id=os.environ.get("DEFAULT_IDENTITY_CLIENT_ID"))
    return MLClient(credential, workspace["subscription_id"], workspace["resource_group"], workspace["workspace_name"])


def _write(folder: str, name: str, data: dict) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    print(json.dumps(data, default=str)[:2000], flush=True)
    return path


# ---------------------------------------------------------------------------------------------- test-automl


def automl_proba(model_dir: Path, texts: List[str], labels: List[str], python: str):
    """Probabilities of an AutoML MLflow model, columns in ``labels`` (label id) order."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="automl-test-") as scratch:
        scratch = Path(scratch)
        (scratch / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
        (scratch / "predict.py").write_text(PREDICT_SCRIPT, encoding="utf-8")
        subprocess.run(
            [
                python,
                str(scratch / "predict.py"),
                str(model_dir),
                str(scratch / "texts.json"),
                str(scratch / "proba.npy"),
                str(scratch / "classes.json"),
            ],
            check=True,
        )
        proba = np.load(scratch / "proba.npy")
        classes = json.loads((scratch / "classes.json").read_text(encoding="utf-8"))
    if sorted(classes) != sorted(labels):
        raise UserError(f"the AutoML model's classes {classes} are not this run's labels {labels}")
    return proba[:, [classes.index(label) for label in labels]]


def test_automl(
    model_dir: str,
    test_file: str,
    val_file: str,
    labels_file: str,
    settings_file: str,
    output_dir: str,
    python: Optional[str] = None,
    task: str = "single_label",
) -> dict:
    """AutoML's model as a candidate for ``task``: ``<output>/result.json`` (an :func:`finetune.selection.choose.evaluate`
    entry: the rule chosen on val, the test metrics at it and at argmax / 0.5 per label) and ``<output>/model/``
    (``candidate.json`` + the MLflow model, what the register step ships if AutoML wins)."""
    labels = json.loads(Path(labels_file).read_text(encoding="utf-8"))
    python = python or os.environ.get(AUTOML_PYTHON_VARIABLE) or sys.executable
    if task == NER_TASK.name:
        # Tagged, not thresholded: the NER decision is fixed (argmax per word, IOB2), nothing is chosen on val.
        tested = ner_candidate_result(Path(model_dir), test_file, labels, python)
    else:
        tested = classifier_result(Path(model_dir), test_file, val_file, labels, settings_file, task, python)
    package = Path(output_dir) / CANDIDATE_DIR
    shutil.copytree(model_dir, package / AUTOML_MLFLOW_DIR)
    (package / "candidate.json").write_text(
        json.dumps(
            {
                "family": "automl",
                "task": task,
                "labels": labels,
                "mlflow_model": AUTOML_MLFLOW_DIR,
                "decision": tested["decision"],
                "best_estimator": "AML AutoML NLP best_model",
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    result = {"family": "automl", "model_format": "mlflow", "task": task, **tested}
    _write(output_dir, RESULT, result)
    return result


def classifier_result(model_dir: Path, test_file, val_file, labels, settings_file, task: str, python: str) -> dict:
    """A classifier's entry: its decision rule chosen on val with the select settings, its test metrics at it."""
    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    val_texts, y_val = read_targets(val_file, labels, task)
    texts, y_true = read_targets(test_file, labels, task)
    # One load of the model (minutes for a BERT on a CPU node) for both splits.
    proba = automl_proba(model_dir, list(val_texts) + list(texts), labels, python)
    rule = choose_rule(
        y_val,
        proba[: len(val_texts)],
        labels,
        task,
        DecisionSettings.of(SelectConfig(**settings["select"]), settings["data"]),
    )
    return {"rows": len(texts), **test_at_rule(y_true, proba[len(val_texts) :], labels, task, rule)}


# ---------------------------------------------------------------------------------------------- register


def register(
    finetuned_dir: str,
    test_file: str,
    labels_file: str,
    settings_file: str,
    output_dir: str,
    automl_result: Optional[str] = None,
    ml_client=None,
    val_file: Optional[str] = None,
) -> RegisteredChoice:
    """Select among the candidates and production, register the winner; returns (and writes) the model reference.

    With ``val_file`` the fine-tuned candidate's decision rule is chosen on val first (per-label thresholds for
    multi-label data), as the local select stage does; without it, it keeps the rule it was trained with."""
    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    select = settings["select"]
    labels = json.loads(Path(labels_file).read_text(encoding="utf-8"))
    prescored = {}
    if automl_result:
        # AutoML NLP models run only in AutoML's runtime; the test step scored and packaged it there.
        prescored["automl"] = {
            "result": json.loads((Path(automl_result) / RESULT).read_text(encoding="utf-8")),
            "path": str(Path(automl_result) / CANDIDATE_DIR),
        }
    model_registry = AmlRegistry(ml_client or job_client(), select["registered_model_name"])
    with tempfile.TemporaryDirectory(prefix="finetune-select-") as scratch:
        # Tested as it will serve: exported for the endpoint's runtime (the local launcher's export stage).
        finetuned = export_candidate(
            Path(finetuned_dir) / CANDIDATE_DIR, settings["endpoint"].get("runtime", "torch"), Path(scratch) / "export"
        )
        outcome = select_and_register(
            model_registry,
            {FINETUNED: str(finetuned)},
            test_file,
            labels,
            SelectConfig(**select),
            settings["data"],
            settings["config"],
            settings["sample_request"],
            Path(scratch),
            prescored=prescored,
            sources={FINETUNED: f"pipeline {settings['run']}: training", "automl": "AML AutoML NLP"},
            conda=settings["environment"]["conda_file"],
            commit=settings.get("git_commit"),
            val_csv=val_file,
        )
    choice = RegisteredChoice.of(outcome.selection, outcome.registration, model_type="mlflow_model")
    if choice.verdict is Verdict.REGISTER and choice.candidate in prescored:
        # The package registered as is (plus score.py): it serves in its MLflow model's own environment.
        choice.environment = deploy_builders.model_environment(Path(prescored[choice.candidate]["path"]))
    if choice.verdict is Verdict.REGISTER and not settings.get("deploy"):
        # No rollout follows: the registered version is production now, as the local launcher does.
        choice.promoted = model_registry.promote(choice.version)
    _write(output_dir, MODEL_REF, choice.to_dict())
    return choice


# ---------------------------------------------------------------------------------------------- deploy


def deploy(model_ref_dir: str, settings_file: str, output_dir: str, ml_client=None) -> StepRollout:
    """Roll the registered model out to the endpoint; returns (and writes) ``rollout.json``."""
    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    choice = RegisteredChoice.from_dict(json.loads((Path(model_ref_dir) / MODEL_REF).read_text(encoding="utf-8")))
    if choice.verdict is not Verdict.REGISTER:
        result = StepRollout("skipped", choice, reason=f"nothing new to deploy: {choice.reason}")
        _write(output_dir, ROLLOUT, result.to_dict())
        return result
    config = EndpointConfig(**settings["endpoint"])
    with tempfile.TemporaryDirectory(prefix="finetune-score-") as code_dir:
        # The deployment's code is the task's scoring script alone: it is self-contained by contract.
        # settings.json written before NER existed has no "data": a classifier's.
        script = task_entry_script((settings.get("data") or {}).get("task"))
        shutil.copy2(script, Path(code_dir) / deploy_builders.SCORING_SCRIPT)
        ml_client = ml_client or job_client()
        # Whichever candidate won, score.py serves it; an AutoML model in the environment it brought along.
        endpoint = AmlEndpoint(ml_client, config, environment(choice.environment or settings["environment"]), code_dir)
        endpoint.ensure()
        model = ModelRef(name=choice.name, version=choice.version, path=f"azureml:{choice.name}:{choice.version}")
        try:
            outcome = rollout(
                endpoint,
                deploy_builders.deployment_name(choice.version),
                model,
                settings["sample_request"],
                ramp=config.ramp,
                max_error_rate=config.max_error_rate,
            )
        except RolloutError as error:
            _write(output_dir, ROLLOUT, StepRollout("failed", choice, error=str(error)).to_dict())
            raise

    choice.promoted = AmlRegistry(ml_client, choice.name).promote(choice.version)
    result = StepRollout("succeeded", choice, rollout=outcome, promoted=choice.promoted)
    _write(output_dir, ROLLOUT, result.to_dict())
    # The version that serves is Production now: the deploy step's model_ref.json says so for what comes next.
    _write(output_dir, MODEL_REF, choice.to_dict())
    return result


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(argv)
    try:
        if isinstance(args, TestAutomlArgs):
            test_automl(
                args.model,
                args.test_file,
                args.val_file,
                args.labels_file,
                args.settings,
                args.output_dir,
                args.python,
                args.task,
            )
        elif isinstance(args, RegisterArgs):
            register(
                args.finetuned,
                args.test_file,
                args.labels_file,
                args.settings,
                args.output_dir,
                args.automl_result,
                val_file=args.val_file,
            )
        else:
            deploy(args.model_ref, args.settings, args.output_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
