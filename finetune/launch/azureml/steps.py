"""What the pipeline's own steps run on AML: ``python -m finetune.launch.azureml.steps <step> ...``.

- ``test-automl``: score AutoML's best model (its MLflow output) on the test split with
  ``finetune.metrics``. AutoML NLP models need AutoML's runtime (``azureml-automl-dnn-nlp``), which the
  project environment does not carry, so the model is loaded by a small script in the model's own conda
  environment (its ``conda.yaml``, created in the job) and only the probabilities come back.
- ``register``: re-score the sweep's best model with :func:`finetune.select.evaluate` (the scoring code
  that will serve it), add AutoML's test metrics, decide with :func:`finetune.select.choose`, and register
  the winner as an AML model with the tags the local registry writes (:func:`finetune.registry.selection_tags`,
  ``content_sha256``, ``git_commit``); a version with the same content is reused.
- ``deploy``: :func:`finetune.serve.rollout.rollout` of the registered model with an :class:`.AmlEndpoint`.

The workspace comes from the variables AML sets in every job and the credential is the compute's
managed identity: nothing secret, and no workspace coordinates, travel as job inputs.
Each step writes one JSON file into its output folder.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from finetune.errors import UserError

RESULT = "result.json"
MODEL_REF = "model_ref.json"
ROLLOUT = "rollout.json"
CANDIDATE_DIR = "model"  # where finetune.train puts the model inside its output folder

# Runs in the AutoML model's environment, which has mlflow, pandas and numpy but not this package.
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

    from finetune.launch.azureml.workspace import from_job_environment

    workspace = from_job_environment()
    # A user-assigned identity is named by this variable; unset, the system-assigned identity answers.
    credential = ManagedIdentityCredential(client_id=os.environ.get("DEFAULT_IDENTITY_CLIENT_ID"))
    return MLClient(credential, workspace["subscription_id"], workspace["resource_group"],
                    workspace["workspace_name"])


def _write(folder: str, name: str, data: dict) -> Path:
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    print(json.dumps(data, default=str)[:2000], flush=True)
    return path


# ---------------------------------------------------------------------------------------------- test-automl


def model_python(model_dir: Path) -> str:
    """A Python with the MLflow model's own dependencies: its conda.yaml created as an environment."""
    spec = Path(model_dir) / "conda.yaml"
    if not spec.is_file():
        raise UserError(f"{model_dir}: no conda.yaml, so the AutoML model's runtime is unknown")
    prefix = Path(tempfile.mkdtemp(prefix="automl-env-"))
    shutil.rmtree(prefix)
    subprocess.run(["conda", "env", "create", "--quiet", "--prefix", str(prefix), "--file", str(spec)], check=True)
    return str(prefix / "bin" / "python")


def automl_proba(model_dir: Path, texts: List[str], labels: List[str], python: str):
    """Test-split probabilities of an AutoML MLflow model, columns in ``labels`` (label id) order."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="automl-test-") as scratch:
        scratch = Path(scratch)
        (scratch / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
        (scratch / "predict.py").write_text(PREDICT_SCRIPT, encoding="utf-8")
        subprocess.run([python, str(scratch / "predict.py"), str(model_dir), str(scratch / "texts.json"),
                        str(scratch / "proba.npy"), str(scratch / "classes.json")], check=True)
        proba = np.load(scratch / "proba.npy")
        classes = json.loads((scratch / "classes.json").read_text(encoding="utf-8"))
    if sorted(classes) != sorted(labels):
        raise UserError(f"the AutoML model's classes {classes} are not this run's labels {labels}")
    return proba[:, [classes.index(label) for label in labels]]


def test_automl(model_dir: str, test_file: str, labels_file: str, output_dir: str,
                python: Optional[str] = None) -> dict:
    from finetune.automl import read_split
    from finetune.metrics import classification_metrics

    labels = json.loads(Path(labels_file).read_text(encoding="utf-8"))
    texts, y_true = read_split(test_file, labels)
    proba = automl_proba(Path(model_dir), texts, labels, python or model_python(Path(model_dir)))
    result = {"kind": "automl", "model_format": "mlflow", "test": classification_metrics(y_true, proba),
              "rows": len(texts)}
    _write(output_dir, RESULT, result)
    return result


# ---------------------------------------------------------------------------------------------- register


def registered_versions(ml_client, name: str) -> list:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(ml_client.models.list(name=name))
    except ResourceNotFoundError:
        return []


def register(transformer_dir: str, test_file: str, labels_file: str, settings_file: str, output_dir: str,
             automl_model: Optional[str] = None, automl_result: Optional[str] = None, ml_client=None) -> dict:
    """Select among the candidates and register the winner; returns (and writes) the model reference."""
    from azure.ai.ml.entities import Model

    from finetune.export import export_candidate
    from finetune.registry import card_facts, content_hash, selection_tags, stage_artifact
    from finetune.select import choose, evaluate

    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    select = settings["select"]
    labels = json.loads(Path(labels_file).read_text(encoding="utf-8"))
    # Tested as it will serve: exported for the endpoint's runtime first (the local launcher's export stage).
    exported = export_candidate(Path(transformer_dir) / CANDIDATE_DIR, settings["endpoint"].get("runtime", "torch"),
                                Path(tempfile.mkdtemp(prefix="finetune-export-")) / "model")
    candidates = {"transformer": str(exported)}
    results = evaluate(candidates, test_file, labels)
    if automl_result:
        # AutoML NLP models run only in AutoML's runtime; the test step scored it there with the same metrics.
        results["automl"] = json.loads((Path(automl_result) / RESULT).read_text(encoding="utf-8"))
    selection = choose(results, select["metric"], select["margin"])
    winner = selection["winner"]
    ml_client = ml_client or job_client()
    name = select["registered_model_name"]
    tags = selection_tags(selection, settings["data"], settings["config"], source=winner)

    with tempfile.TemporaryDirectory(prefix="finetune-register-") as scratch:
        if winner == "transformer":
            folder = stage_artifact(Path(candidates[winner]), settings["sample_request"], Path(scratch) / "model",
                                    card_facts(settings["config"], settings["data"], selection))
            # An MLflow model (MLmodel at the root): AML's batch and no-code deployments accept it, and the
            # online deployment still runs the project's score.py over the same folder.
            model_type = "mlflow_model"
        else:
            folder, model_type = Path(automl_model), "mlflow_model"
        digest = content_hash(folder)
        versions = registered_versions(ml_client, name)
        same = [m for m in versions if (m.tags or {}).get("content_sha256") == digest]
        if same:
            model = min(same, key=lambda m: int(m.version))
            existing = True
        else:
            version = str(max([int(m.version) for m in versions if str(m.version).isdigit()], default=0) + 1)
            if winner == "transformer":
                # The scoring script reports this in every response, as with the local registry.
                (folder / "registered.json").write_text(json.dumps({"name": name, "version": version}))
            all_tags = {key: str(value) for key, value in tags.items() if value is not None}
            all_tags["content_sha256"] = digest
            if settings.get("git_commit"):
                all_tags["git_commit"] = settings["git_commit"]
            model = ml_client.models.create_or_update(Model(
                name=name, version=version, path=str(folder), type=model_type, tags=all_tags,
                description=f"{winner} of run {settings['run']}: best test {select['metric']}"))
            existing = False
    ref = {"name": name, "version": str(model.version), "candidate": winner, "model_type": model_type,
           "kind": results[winner].get("kind"), "existing": existing, "content_sha256": digest,
           "selection": {key: selection[key] for key in ("metric", "winner", "decision", "reason", "test")}}
    _write(output_dir, MODEL_REF, ref)
    return ref


# ---------------------------------------------------------------------------------------------- deploy


def deploy(model_ref_dir: str, settings_file: str, output_dir: str, ml_client=None) -> dict:
    """Roll the registered model out to the endpoint; the result is the ``rollout`` summary section."""
    from finetune.config import EndpointConfig
    from finetune.launch.azureml.deploy import SCORING_SCRIPT, deployment_name
    from finetune.launch.azureml.endpoint import AmlEndpoint
    from finetune.launch.azureml.environment import environment
    from finetune.serve import score
    from finetune.serve.rollout import ModelRef, RolloutError, rollout

    settings = json.loads(Path(settings_file).read_text(encoding="utf-8"))
    ref = json.loads((Path(model_ref_dir) / MODEL_REF).read_text(encoding="utf-8"))
    if ref["candidate"] != "transformer":
        result = {"status": "skipped", "model": ref,
                  "reason": "the winner is an AML AutoML NLP model, which needs AutoML's runtime; the project's "
                            "score.py serves fine-tuned transformers, so the endpoint is left as it was"}
        _write(output_dir, ROLLOUT, result)
        return result
    config = EndpointConfig(**settings["endpoint"])
    with tempfile.TemporaryDirectory(prefix="finetune-score-") as code_dir:
        # The deployment's code is the scoring script alone: it is self-contained by contract.
        shutil.copy2(score.__file__, Path(code_dir) / SCORING_SCRIPT)
        serving = settings.get("serving_environment") or settings["environment"]
        endpoint = AmlEndpoint(ml_client or job_client(), config, environment(serving), code_dir)
        endpoint.ensure()
        model = ModelRef(name=ref["name"], version=ref["version"], path=f"azureml:{ref['name']}:{ref['version']}")
        try:
            outcome = rollout(endpoint, deployment_name(ref["version"]), model, settings["sample_request"],
                              ramp=config.ramp, max_error_rate=config.max_error_rate)
        except RolloutError as error:
            _write(output_dir, ROLLOUT, {"status": "failed", "error": str(error), "model": ref})
            raise
    result = outcome.to_dict()
    _write(output_dir, ROLLOUT, result)
    return result


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.launch.azureml.steps",
                                     description="Steps of the finetune AML pipeline (run inside AML jobs).")
    steps = parser.add_subparsers(dest="step", required=True)
    test = steps.add_parser("test-automl", help="score AutoML's best model on the test split")
    test.add_argument("--model", required=True)
    test.add_argument("--test-file", required=True)
    test.add_argument("--labels-file", required=True)
    test.add_argument("--output-dir", required=True)
    test.add_argument("--python", help="a Python with the model's dependencies (default: create its conda env)")
    reg = steps.add_parser("register", help="select the best candidate and register it")
    reg.add_argument("--transformer", required=True)
    reg.add_argument("--automl-model")
    reg.add_argument("--automl-result")
    reg.add_argument("--test-file", required=True)
    reg.add_argument("--labels-file", required=True)
    reg.add_argument("--settings", required=True)
    reg.add_argument("--output-dir", required=True)
    dep = steps.add_parser("deploy", help="roll the registered model out to the endpoint")
    dep.add_argument("--model-ref", required=True)
    dep.add_argument("--settings", required=True)
    dep.add_argument("--output-dir", required=True)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.step == "test-automl":
            test_automl(args.model, args.test_file, args.labels_file, args.output_dir, args.python)
        elif args.step == "register":
            register(args.transformer, args.test_file, args.labels_file, args.settings, args.output_dir,
                     args.automl_model, args.automl_result)
        else:
            deploy(args.model_ref, args.settings, args.output_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
