"""What a registered version folder holds besides the candidate's own files, written by one function.

- ``score.py``: the AML entry script (online endpoints, ``azmlinfsrv``).
- ``MLmodel`` + ``code/finetune_score.py`` (NER: ``finetune_ner_score.py``) + ``conda.yaml`` /
  ``python_env.yaml`` / ``requirements.txt`` + ``input_example.json``: an MLflow model with the
  ``python_function`` flavour, whose ``loader_module`` is the same scoring file (``_load_pyfunc``), with a signature (``text`` string in; ``label`` and
  ``probability_<label>`` out). ``mlflow.pyfunc.load_model("models:/<name>@production")`` loads it, and
  AML accepts the folder as an ``mlflow_model`` asset (the MLmodel file at its root is what AML checks,
  https://learn.microsoft.com/azure/machine-learning/how-to-manage-models-mlflow).
  The environment is the serving one of the candidate's runtime (:func:`finetune.registry.environments.serving_conda_spec`),
  or the own environment of the MLflow model a candidate wraps (AML AutoML's best model, :func:`model_environment`).
- ``README.md``: a model card with Hugging Face metadata (base model, dataset and its hash, test metrics at
  the shipped decision rule, runtime, intended use, limits).
- ``sample_request.json``: what the rollout's smoke test sends.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from finetune.registry.environments import serving_conda_spec
from finetune.serve import SCORE_SCRIPT
from finetune.serve.entry_scripts import entry_script

PYFUNC_MODULE = "finetune_score"
# NER's entry script gets its own module name: Python caches a loader module by name, so a process that loaded one
# task's model (mlflow.pyfunc.load_model) would otherwise answer the next task's model with the first one's code.
NER_PYFUNC_MODULE = "finetune_ner_score"
# Files this module writes; copied from a candidate (a downloaded registered version) they would be stale.
GENERATED = (
    "score.py",
    "conda.yaml",
    "sample_request.json",
    "registered.json",
    "MLmodel",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    "code",
    "README.md",
)
# MLflow stamps these on every save; dropped, equal models give equal folders (and equal content hashes).
VOLATILE_MLMODEL_KEYS = ("model_uuid", "utc_time_created", "mlflow_version", "model_id")


def runtime_of(candidate: dict) -> str:
    """The serving environment's key: the hf candidate's runtime, or ``automl``."""
    return candidate.get("runtime", "torch") if candidate.get("family") == "hf" else "automl"


def model_environment(folder: Path, candidate: dict) -> Optional[dict]:
    """The conda environment of the MLflow model a candidate wraps (``mlflow_model`` in candidate.json), or None.

    AML AutoML NLP writes its best model's environment next to it (``conda.yaml``: its Python, numpy/pandas
    pins, ``azureml-automl-dnn-nlp``, ``azureml-defaults`` with the inference server, ``mlflow-skinny``;
    ``AutoMLNLPCondaPackagesList``/``AutoMLNLPPipPackagesList`` of azureml-automl-core), and Microsoft's
    manual deployment of an AutoML model uses exactly that file as the deployment's environment
    (https://learn.microsoft.com/azure/machine-learning/how-to-deploy-automl-endpoint, "Deploy manually"):
    the model loads nowhere else, so the package serves in it."""
    import yaml

    if not candidate.get("mlflow_model"):
        return None
    path = Path(folder) / candidate["mlflow_model"] / "conda.yaml"
    if not path.is_file():
        raise ValueError(f"{path.parent} is named by candidate.json as its MLflow model but has no conda.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_serving_files(
    folder: Path, sample_request: dict, card: Optional[dict] = None, conda: Optional[dict] = None
) -> None:
    """Add score.py, the MLflow model files, sample_request.json and the model card to ``folder``.

    ``conda``: the serving environment (default: the one of the candidate's runtime, built here); a wrapped
    MLflow model's own environment (:func:`model_environment`) comes before both."""
    from finetune.serve.score import read_candidate

    candidate = read_candidate(folder)
    script = entry_script(folder)
    shutil.copy2(script, folder / "score.py")
    (folder / "sample_request.json").write_text(json.dumps(sample_request, indent=2))
    texts = [item["text"] for item in sample_request.get("data", [])][:3] or ["an example review"]
    write_mlflow_model(
        folder,
        [str(label) for label in candidate["labels"]],
        model_environment(folder, candidate) or conda or serving_conda_spec(runtime_of(candidate)),
        texts,
        multi_label=candidate.get("task") == "multi_label",
        script=script,
        ner=candidate.get("task") == "ner",
    )
    (folder / "README.md").write_text(model_card(candidate, card or {}), encoding="utf-8")


def write_mlflow_model(
    folder: Path,
    labels: list[str],
    conda_env: dict,
    example_texts: list[str],
    multi_label: bool = False,
    script: Path = SCORE_SCRIPT,
    ner: bool = False,
) -> None:
    """The pyfunc flavour's files, written by MLflow itself into a scratch folder and moved into ``folder``
    (a multi-label model's ``labels`` output is an array of strings per row; an NER model's ``entities`` is a
    JSON list per row); ``script`` is the entry script the pyfunc loader module is a copy of."""
    import logging
    import os

    import pandas as pd
    import yaml

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    decided = ColSpec(Array("string"), "labels") if multi_label else ColSpec("string", "label")
    outputs = (
        [ColSpec("string", "entities")]
        if ner
        else [decided] + [ColSpec("double", f"probability_{label}") for label in labels]
    )
    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))
    with tempfile.TemporaryDirectory(prefix="finetune-mlmodel-") as scratch:
        module = NER_PYFUNC_MODULE if ner else PYFUNC_MODULE
        code = Path(scratch) / f"{module}.py"
        shutil.copy2(script, code)
        saved = Path(scratch) / "model"
        # MLflow scores the input example to validate it and says so at INFO on stderr, in the middle of
        # the pipeline's console; a failed validation still raises.
        loggers = [logging.getLogger(name) for name in ("mlflow.pyfunc", "mlflow.models")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            mlflow.pyfunc.save_model(
                str(saved),
                loader_module=module,
                code_paths=[str(code)],
                conda_env=conda_env,
                signature=signature,
                input_example=pd.DataFrame({"text": example_texts}),
            )
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
        mlmodel = yaml.safe_load((saved / "MLmodel").read_text())
        for key in VOLATILE_MLMODEL_KEYS:
            mlmodel.pop(key, None)
        (saved / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=True))
        for path in saved.iterdir():
            target = folder / path.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(path), str(target))


def _kind(candidate: dict) -> str:
    if candidate.get("family") == "hf":
        return "fine-tuned transformer"
    return "AML AutoML NLP model" if candidate.get("mlflow_model") else "TF-IDF AutoML pipeline"


def model_card(candidate: dict, card: dict) -> str:
    """README.md with Hugging Face model-card metadata (YAML front matter) and the facts a user needs.

    ``card`` (all optional): ``name``, ``base_model``, ``dataset`` (name), ``dataset_sha256``,
    ``split_sha256`` ({split: sha256}), ``metrics`` (test metrics of this model), ``selection_metric``.
    """
    import yaml

    labels = [str(label) for label in candidate["labels"]]
    if candidate.get("task") == "ner":
        # The classifier card's wording does not fit a tagger; it gets its own.
        return ner_model_card(candidate, card)
    runtime = runtime_of(candidate)
    metrics = card.get("metrics") or {}
    threshold = candidate.get("threshold")
    decision = (
        f"`{labels[-1]}` when its probability is at least {threshold}"
        if threshold is not None
        else "the label with the highest probability"
    )
    metadata = {
        "library_name": "transformers" if candidate.get("family") == "hf" else "sklearn",
        "pipeline_tag": "text-classification",
        "tags": ["finetune", "text-classification"] + (["onnx"] if runtime.startswith("onnx") else []),
    }
    if card.get("base_model"):
        metadata["base_model"] = card["base_model"]
    if card.get("dataset"):
        metadata["datasets"] = [card["dataset"]]
    if metrics:
        metadata["model-index"] = [
            {
                "name": card.get("name") or "finetune-model",
                "results": [
                    {
                        "task": {"type": "text-classification"},
                        "dataset": {
                            "name": card.get("dataset") or "test split",
                            "type": card.get("dataset") or "custom",
                            "split": "test",
                        },
                        "metrics": [
                            {"type": name, "value": round(float(value), 6), "name": f"test {name}"}
                            for name, value in metrics.items()
                            if isinstance(value, (int, float))
                        ],
                    }
                ],
            }
        ]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {card.get('name') or 'Text classifier'}",
        "",
        f"A {_kind(candidate)} that classifies a text as one of: {', '.join(labels)}.",
        "",
        "## Use",
        "",
        "Intended use: classifying short English product-review-like texts into the labels above, as a "
        "signal for people or downstream aggregates, not as the only basis of a decision about a person.",
        "",
        "```python",
        "import mlflow, pandas",
        'model = mlflow.pyfunc.load_model("models:/<name>@production")  # or this folder',
        'model.predict(pandas.DataFrame({"text": ["Fits my truck perfectly"]}))',
        "```",
        "",
        'Online: `score.py` (AML entry script), request `{"data": [{"text": "..."}]}`. '
        "Batch: `python -m finetune.predict --model <this folder> --input reviews.csv --output scored.csv`.",
        "",
        "## Details",
        "",
        f"- decision rule: {decision}",
        f"- runtime: {runtime}"
        + (
            f", max length {candidate['max_length']} tokens (longer texts are truncated)"
            if candidate.get("max_length")
            else ""
        ),
        f"- base model: {card.get('base_model') or 'n/a'}",
        f"- dataset: {card.get('dataset') or 'n/a'} (raw data sha256 {card.get('dataset_sha256') or 'n/a'})",
    ]
    for split, digest in (card.get("split_sha256") or {}).items():
        lines.append(f"- {split} split sha256: {digest}")
    if metrics:
        lines += ["", "## Test metrics (at the decision rule above)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items() if isinstance(value, (int, float))]
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on one dataset's label definitions; texts from other domains, languages or much longer "
        "than the max length score less reliably.",
        "- Probabilities are the model's, not calibrated frequencies, unless the metrics above say otherwise.",
        "- Reviews can hold personal data: the server does not log request texts unless told to.",
        "",
    ]
    return "\n".join(lines)


def ner_model_card(candidate: dict, card: dict) -> str:
    """README.md of an NER version: what it tags, how to call it, the test figures and the limits."""
    import yaml

    types = sorted({str(label)[2:] for label in candidate["labels"] if label != "O"})
    metrics = card.get("metrics") or {}
    metadata = {
        "library_name": "transformers" if candidate.get("family") == "hf" else "sklearn-crfsuite",
        "pipeline_tag": "token-classification",
        "tags": ["finetune", "token-classification", "ner"],
    }
    if card.get("base_model"):
        metadata["base_model"] = card["base_model"]
    if card.get("dataset"):
        metadata["datasets"] = [card["dataset"]]
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {card.get('name') or 'Named-entity tagger'}",
        "",
        f"A {'fine-tuned transformer' if candidate.get('family') == 'hf' else 'linear-chain CRF'} that finds "
        f"entities of these types in text: {', '.join(types)}.",
        "",
        "## Use",
        "",
        'Online: `score.py`, request `{"data": [{"text": "..."}]}` -> `{"predictions": [{"entities": '
        '[{"text", "label", "start", "end", "score"}]}]}` (character offsets into the text sent); '
        '`{"tokens": [...]}` items are answered with one IOB2 tag per token. Batch: `python -m finetune.predict '
        "--model <this folder> --input texts.csv --output tagged.csv` (an `entities` column).",
        "",
        "## Details",
        "",
        f"- base model: {card.get('base_model') or 'n/a'}",
        f"- dataset: {card.get('dataset') or 'n/a'} (raw data sha256 {card.get('dataset_sha256') or 'n/a'})",
    ]
    if metrics:
        lines += ["", "## Test metrics (entity level, exact span and type)", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items() if isinstance(value, (int, float))]
    lines += [
        "",
        "## Limits",
        "",
        "- Entity types and their boundaries are those of the training data's annotation guidelines.",
        "- Text from other domains or languages, and entities unseen in training, are found less often.",
        "",
    ]
    return "\n".join(lines)
