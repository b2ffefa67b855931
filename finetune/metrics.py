"""The one metric function: training, the AutoML candidate, selection and the report all call it.

AUC is computed from predicted probabilities (one-vs-rest, support-weighted for 3+ classes), never from
argmax labels: a label-based AUC only measures one threshold.
"""
from __future__ import annotations

from typing import Dict, Sequence

METRIC_NAMES = (
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "auc_weighted",
)


def classification_metrics(y_true: Sequence[int], proba) -> Dict[str, float]:
    """Metrics of class-probability predictions `proba` (n_samples x n_classes) against label ids."""
    import numpy as np
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    y_pred = proba.argmax(axis=1)
    n_classes = proba.shape[1]
    labels = list(range(n_classes))
    result = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        result[f"precision_{average}"] = float(precision)
        result[f"recall_{average}"] = float(recall)
        result[f"f1_{average}"] = float(f1)
    present = np.unique(y_true)
    if len(present) < 2:
        result["auc_weighted"] = float("nan")  # undefined with one class present
    elif n_classes == 2:
        result["auc_weighted"] = float(roc_auc_score(y_true, proba[:, 1]))
    else:
        result["auc_weighted"] = float(
            roc_auc_score(y_true, proba, multi_class="ovr", average="weighted", labels=labels)
        )
    return result
