"""STAND-IN for an AML AutoML NLP text classification job (single- and multi-label) in the AML emulation; a
``text_ner`` job goes to :mod:`.automl_ner_standin`.

Only the service runs AutoML NLP. The stand-in does what the job does as seen from the steps after it, so they
meet what they would meet on AML:

- It reads its ``training_data`` / ``validation_data`` MLTable folders as the ``mltable`` library does: the
  ``paths`` the MLTable file lists (``file``, ``folder`` or ``pattern``, relative to the MLTable file) through
  its ``read_delimited`` transformation (delimiter, encoding, header), never a glob of CSVs beside it.
- It applies AutoML NLP's documented data validation with its own code ("Data validation" in
  https://learn.microsoft.com/azure/machine-learning/how-to-auto-train-nlp-models): at least 50 training
  samples; train and validation with the same columns, in the same order, with the same types and unique names;
  at least two unique labels; for multi-label, a label column in one of the two accepted formats (plain text
  ``"a,b"`` split at every character other than letters, digits and ``_``, or a Python list with quotes
  ``"['a', 'b']"``), at least one sample with 0 or 2+ labels (else it is a multi-class task), and no label both
  as ``int`` and as ``str``. A failed check fails the job, as AutoML's does, before anything is trained.
- It writes ``best_model`` as AutoML does (azureml-automl-dnn-nlp's ``save_model_wrapper`` saves through
  AutoML's run context as an MLflow sklearn model: ``MLmodel`` with ``sklearn`` and ``python_function``
  flavours, ``model.pkl``, ``conda.yaml``, ``requirements.txt``; Azure/azureml-examples'
  ``mlflow-model-local-inference-test.ipynb`` loads it either way). The pickled object has the interface of
  AutoML's ``ModelWrapper`` classes: ``classes_`` (label names; multi-label: its MultiLabelBinarizer's),
  ``predict_proba(DataFrame)`` (n x k softmax rows; multi-label a sigmoid per label) and ``predict(DataFrame)``
  (labels; multi-label tuples of labels at 0.5). Its ``conda.yaml`` lists, pinned, what the stand-in model needs
  at inference plus the inference server, as AutoML's lists its runtime and ``azureml-defaults``.

The model is TF-IDF + logistic regression, labelled as a stand-in in ``STAND_IN.txt``. On a few hundred
reviews it beats a transformer fine-tuned for one epoch, which is how the "AutoML wins" scenario is made.
"""

from __future__ import annotations

import ast
import platform
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from . import automl_ner_standin

MIN_TRAINING_SAMPLES = 50
MULTI_LABEL_TASK = "text_classification_multilabel"
# Plain-text multi-label cells: "only use alphabetical, numerical and '_' in your labels. All other characters
# are recognized as the separator of labels."
PLAIN_SEPARATOR = re.compile(r"[^A-Za-z0-9_]+")
INFERENCE_PACKAGES = (
    "scikit-learn",
    "pandas",
    "numpy",
    "cloudpickle",
    "mlflow-skinny",
    "azureml-inference-server-http",
)
NOTICE = (
    "AML AutoML NLP cannot run outside Azure ML. This MLflow model (TF-IDF + logistic regression) stands in "
    "for its best_model output in the AML emulation (tests/amlemu/automl_standin.py).\n"
)


class AutomlDataError(Exception):
    """A data validation check of AutoML NLP failed: the job fails with this message."""


# ---------------------------------------------------------------------------------------------- MLTable


def read_mltable(folder: Path):
    """The table an MLTable folder describes: the files of its ``paths``, read by ``read_delimited``."""
    import pandas as pd
    import yaml

    spec_file = Path(folder) / "MLTable"
    if not spec_file.is_file():
        raise AutomlDataError(f"{folder} holds no MLTable file")
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
    files: List[Path] = []
    for entry in spec.get("paths") or []:
        if "file" in entry:
            files.append(spec_file.parent / entry["file"])
        elif "folder" in entry:
            files.extend(sorted(p for p in (spec_file.parent / entry["folder"]).iterdir() if p.is_file()))
        elif "pattern" in entry:
            files.extend(sorted(spec_file.parent.glob(entry["pattern"])))
    if not files or not all(path.is_file() for path in files):
        raise AutomlDataError(f"{spec_file}: its paths name no readable file ({[str(p) for p in files]})")
    delimited = next(
        (
            step["read_delimited"]
            for step in spec.get("transformations") or []
            if isinstance(step, dict) and "read_delimited" in step
        ),
        None,
    )
    if delimited is None:
        raise AutomlDataError(f"{spec_file}: no read_delimited transformation; AutoML NLP reads delimited text")
    header = delimited.get("header", "all_files_same_headers")
    frames = [
        pd.read_csv(
            path,
            sep=delimited.get("delimiter", ","),
            encoding=delimited.get("encoding", "utf8"),
            header=None if header == "no_header" else 0,
            keep_default_na=False,
        )
        for path in files
    ]
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- validation


def parse_multi_label(cells) -> List[tuple]:
    """Each cell's labels in the one format the whole column uses (plain text or a Python list with quotes)."""
    as_lists = [str(cell).strip().startswith("[") for cell in cells]
    if any(as_lists) and not all(as_lists):
        raise AutomlDataError("the multi-label label column mixes Python lists and plain text; use one format")
    if not all(as_lists):
        return [tuple(label for label in PLAIN_SEPARATOR.split(str(cell)) if label) for cell in cells]
    parsed = []
    for cell in cells:
        try:
            value = ast.literal_eval(str(cell))
        except (ValueError, SyntaxError):
            raise AutomlDataError(f"label cell {cell!r} is not a Python list with quoted labels") from None
        if not isinstance(value, list) or not all(isinstance(label, (str, int)) for label in value):
            raise AutomlDataError(f"label cell {cell!r}: labels must be str or int")
        parsed.append(tuple(value))
    return parsed


def validate(train, valid, target: str, multi_label: bool) -> Optional[List[tuple]]:
    """AutoML NLP's data validation checks (module docstring); the training label sets for multi-label."""
    if len(train) < MIN_TRAINING_SAMPLES:
        raise AutomlDataError(
            f"at least {MIN_TRAINING_SAMPLES} training samples are required; the training data has {len(train)}"
        )
    for name, frame in (("training", train), ("validation", valid)):
        if len(set(frame.columns)) != len(frame.columns):
            raise AutomlDataError(f"the {name} data has duplicate column names: {list(frame.columns)}")
        if target not in frame.columns:
            raise AutomlDataError(f"the {name} data has no label column {target!r}")
    if list(train.columns) != list(valid.columns):
        raise AutomlDataError(
            f"training columns {list(train.columns)} and validation columns "
            f"{list(valid.columns)} differ (same set, same order required)"
        )
    differing = [c for c in train.columns if train[c].dtype != valid[c].dtype]
    if differing:
        raise AutomlDataError(f"columns {differing} have different types in training and validation data")
    if not multi_label:
        if train[target].nunique() < 2:
            raise AutomlDataError("at least two unique labels are required")
        return None
    sets = parse_multi_label(train[target])
    labels = {label for labels in sets for label in labels} | {
        label for labels in parse_multi_label(valid[target]) for label in labels
    }
    if len(labels) < 2:
        raise AutomlDataError("at least two unique labels are required")
    if not any(len(labels) != 1 for labels in sets):
        raise AutomlDataError("every sample has exactly one label: this is a multi-class task, not multi-label")
    clashing = sorted({str(label) for label in labels if isinstance(label, int) and str(label) in labels})
    if clashing:
        raise AutomlDataError(f"labels {clashing} appear both as int and as str")
    return sets


# ---------------------------------------------------------------------------------------------- the model


def _text(frame, columns: List[str]):
    # AutoML NLP joins a sample's text columns into one text.
    return frame[columns].astype(str).agg(" ".join, axis=1)


def _classifier(texts, y):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)),
            ("clf", LogisticRegression(C=4.0, max_iter=1000, class_weight="balanced")),
        ]
    ).fit(texts, y)


class MulticlassModel:
    """The multi-class ModelWrapper's interface over one TF-IDF + logistic regression pipeline."""

    def __init__(self, pipeline, text_columns: List[str]):
        self.pipeline, self.text_columns = pipeline, text_columns
        self.classes_ = [str(c) for c in pipeline.classes_]

    def predict_proba(self, frame):
        return self.pipeline.predict_proba(_text(frame, self.text_columns))

    def predict(self, frame):
        return self.pipeline.predict(_text(frame, self.text_columns))


class MultilabelModel:
    """The multi-label ModelWrapper's interface over one binary pipeline per label."""

    def __init__(self, per_label: Dict[str, object], text_columns: List[str]):
        self.per_label, self.text_columns = per_label, text_columns
        self.classes_ = sorted(per_label)

    def predict_proba(self, frame):
        import numpy as np

        texts = _text(frame, self.text_columns)
        return np.stack([self.per_label[label].predict_proba(texts)[:, 1] for label in self.classes_], axis=1)

    def predict(self, frame, threshold: float = 0.5):
        return [
            tuple(label for label, p in zip(self.classes_, row) if p > threshold) for row in self.predict_proba(frame)
        ]


def conda_env() -> dict:
    from importlib import metadata

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "name": "automl-stand-in",
        "channels": ["conda-forge"],
        "dependencies": [
            f"python={python}",
            "pip",
            {"pip": [f"{name}=={metadata.version(name)}" for name in INFERENCE_PACKAGES]},
        ],
    }


def save(model, folder: Path) -> None:
    """The model as AutoML's ``best_model`` output (module docstring), marked as a stand-in."""
    import mlflow.sklearn

    mlflow.sklearn.save_model(
        model,
        str(folder),
        serialization_format="cloudpickle",
        conda_env=conda_env(),
        metadata={"is_automl_model": True, "stand_in": True, "python_version": platform.python_version()},
    )
    (folder / "STAND_IN.txt").write_text(NOTICE, encoding="utf-8")


def train(training: Path, validation: Path, target: str, task: str, outputs: Dict[str, Path]) -> str:
    """Validate the data, fit the stand-in and write it to every output folder; returns a one-line summary."""
    import cloudpickle

    if task == automl_ner_standin.TASK:
        try:
            return automl_ner_standin.train(training, validation, outputs, save)
        except automl_ner_standin.NerDataError as error:
            raise AutomlDataError(str(error)) from None
    train_frame, valid_frame = read_mltable(training), read_mltable(validation)
    multi_label = task == MULTI_LABEL_TASK
    sets = validate(train_frame, valid_frame, target, multi_label)
    text_columns = [column for column in train_frame.columns if column != target]
    texts = _text(train_frame, text_columns)
    if multi_label:
        model = MultilabelModel(
            {
                str(label): _classifier(texts, [label in s for s in sets])
                for label in {label for s in sets for label in s}
            },
            text_columns,
        )
    else:
        model = MulticlassModel(_classifier(texts, train_frame[target].astype(str)), text_columns)
    # The job loads the model without this module on its path: its classes travel inside model.pkl.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for folder in outputs.values():
        save(model, folder)
    return (
        f"STAND-IN MLflow model (TF-IDF + logistic regression, {len(model.classes_)} labels) from "
        f"{len(train_frame)} training rows read through the MLTable; AutoML NLP's data checks passed"
    )
