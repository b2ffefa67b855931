"""The metric functions, one per task: training, the AutoML candidate, selection and the report all call them.

Ranking metrics (``auc_weighted``, ``average_precision_weighted``) come from the predicted probabilities,
never from labels: a label-based AUC only measures one threshold. Every other metric is measured at a
decision: the predicted labels ``y_pred`` (selection passes the labels of the candidate's shipped decision
rule, :func:`finetune.serve.score.decide`; training's per-evaluation figures use argmax).
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Sequence

METRIC_NAMES = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "auc_weighted",
    "average_precision_weighted",
)
# Multi-label data has these too (``accuracy`` is then subset accuracy: every label of a text right), plus:
MULTI_LABEL_ONLY = ("precision_micro", "recall_micro", "f1_micro", "auc_micro", "hamming_loss")
MULTI_LABEL_METRIC_NAMES = METRIC_NAMES + MULTI_LABEL_ONLY
# NER's entity-level figures (finetune.tasks.ner_metrics computes them; per-type ones aside)
NER_METRIC_NAMES = ("f1_entity", "precision_entity", "recall_entity", "f1_macro_entity")
# Metrics that a decision rule does not change (they rank by probability).
RANKING_METRICS = ("auc_weighted", "average_precision_weighted", "auc_micro")
# The one metric where lower is better (the fraction of wrong label decisions).
LOWER_IS_BETTER = ("hamming_loss",)
PER_CLASS = ("precision", "recall", "f1")
_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/ ]")


def metric_names(task: str) -> tuple:
    """The metrics reported for ``task`` (single_label | multi_label | ner), per-label ones aside."""
    return {"multi_label": MULTI_LABEL_METRIC_NAMES, "ner": NER_METRIC_NAMES}.get(task, METRIC_NAMES)


def task_metrics(task: str, y_true, proba, y_pred=None, labels: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """:func:`multi_label_metrics` or :func:`classification_metrics`, by ``task``."""
    score = multi_label_metrics if task == "multi_label" else classification_metrics
    return score(y_true, proba, y_pred, labels=labels)


def unprefixed(logged: str) -> str:
    """A metric's own name from the name training logs it under: ``val_auc_weighted`` -> ``auc_weighted``."""
    return logged.removeprefix("val_")


def per_class_key(metric: str, label: str) -> str:
    """``recall.<label>``: the per-class metric's name, with characters MLflow refuses in names replaced."""
    return metric + "." + _MLFLOW_UNSAFE.sub("_", str(label))


def decision_metrics(y_true, y_pred, n_classes: int) -> Dict[str, float]:
    """The label-based part of :func:`classification_metrics`: accuracy, macro and support-weighted
    precision/recall/F1 (scikit-learn's definitions, 0 where undefined). From the confusion matrix in numpy:
    choosing a threshold evaluates this hundreds of times."""
    import numpy as np

    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, -1)
    hits, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    weights = support / max(1, support.sum())
    result = {"accuracy": float(hits.sum() / max(1, len(y_true)))}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        result[f"{name}_macro"] = float(values.mean())
        result[f"{name}_weighted"] = float((values * weights).sum())
    return result


def classification_metrics(
    y_true: Sequence[int], proba, y_pred: Optional[Sequence[int]] = None, labels: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """Metrics of class probabilities `proba` (n_samples x n_classes) and decided label ids `y_pred`
    (default: argmax) against label ids `y_true`; with the class names `labels`, also per-class precision,
    recall and F1 (``recall.<label>``...)."""
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    n_classes = proba.shape[1]
    ids = list(range(n_classes))
    result = decision_metrics(y_true, y_pred, n_classes)
    present = np.unique(y_true)
    if len(present) < 2:
        # Undefined with one class present.
        result["auc_weighted"] = result["average_precision_weighted"] = float("nan")
    else:
        if n_classes == 2:
            result["auc_weighted"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            result["auc_weighted"] = float(
                roc_auc_score(y_true, proba, multi_class="ovr", average="weighted", labels=ids)
            )
        # One-vs-rest for every class, weighted by support (AML's average_precision_score_weighted): for
        # binary data the minority class counts too, where the positive class's AP alone is near 1 when
        # positives dominate.
        onehot = np.eye(n_classes)[y_true]
        result["average_precision_weighted"] = float(average_precision_score(onehot, proba, average="weighted"))
    if labels is not None:
        values = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None, zero_division=0)[:3]
        for metric, per_label in zip(PER_CLASS, values):
            for label, value in zip(labels, per_label):
                result[per_class_key(metric, label)] = float(value)
    return result


def multi_label_metrics(y_true, proba, y_pred=None, labels: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Metrics of per-label probabilities ``proba`` (n_samples x n_labels, independent sigmoids) and decided
    0/1 labels ``y_pred`` (default: each probability >= 0.5) against the 0/1 matrix ``y_true``.

    ``accuracy`` is subset accuracy (all of a text's labels right), ``hamming_loss`` the share of wrong label
    decisions; precision/recall/F1 come micro (every label decision pooled: frequent labels dominate), macro
    (every label counts the same) and weighted by support. ``auc_weighted`` and ``average_precision_weighted``
    average the per-label figures by support over the labels present in ``y_true`` (AML's multi-label
    definitions), ``auc_micro`` pools every (text, label) pair. With ``labels``, per-label precision, recall
    and F1 as well (``f1.<label>``).
    """
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = (proba >= 0.5).astype(np.int64) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    result = {
        "accuracy": float((y_true == y_pred).all(axis=1).mean()) if len(y_true) else float("nan"),
        "hamming_loss": float((y_true != y_pred).mean()) if y_true.size else float("nan"),
    }
    for average in ("micro", "macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        result.update(
            {f"precision_{average}": float(precision), f"recall_{average}": float(recall), f"f1_{average}": float(f1)}
        )
    # A label no text has (or every text has) has no AUC: those labels are left out of the averages.
    positives = y_true.sum(axis=0)
    ranked = (positives > 0) & (positives < len(y_true))
    if ranked.any():
        result["auc_weighted"] = float(roc_auc_score(y_true[:, ranked], proba[:, ranked], average="weighted"))
        result["average_precision_weighted"] = float(
            average_precision_score(y_true[:, ranked], proba[:, ranked], average="weighted")
        )
        result["auc_micro"] = float(roc_auc_score(y_true[:, ranked], proba[:, ranked], average="micro"))
    else:
        result["auc_weighted"] = result["average_precision_weighted"] = result["auc_micro"] = float("nan")
    if labels is not None:
        values = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)[:3]
        for metric, per_label in zip(PER_CLASS, values):
            for label, value in zip(labels, per_label):
                result[per_class_key(metric, label)] = float(value)
    return result
