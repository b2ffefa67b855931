"""The report's multi-label parts: label frequency and co-occurrence in the data, and the chosen model per label.

A confusion matrix and one-vs-rest ROC curves say little with dozens of labels that co-occur; what a reader
of a multi-label run asks is which labels are frequent, which come together, and which the model gets right
at the thresholds it ships.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune.data import read_multi_label_split
from finetune.report.common import Figures, table
from finetune.selection.metrics import per_class_key

if TYPE_CHECKING:
    from finetune.plan.results import SelectionResult


def data_lines(labels: list, splits: dict, figures: Figures) -> list[str]:
    """Rows per label and split (``splits``: the data section's), a frequency chart and the co-occurrence heatmap
    of the train split."""
    rows = [[label, *(split.get("class_counts", {}).get(label, 0) for split in splits.values())] for label in labels]
    lines = [
        f"Multi-label: a text has any number of the {len(labels)} labels. Texts per label and split:",
        "",
        table(["label", *(f"{name} ({split.get('rows')} texts)" for name, split in splits.items())], rows),
        "",
    ]
    train = splits.get("train", {})
    counts = [train.get("class_counts", {}).get(label, 0) for label in labels]
    figure, (axis,) = figures.new(7, 1.5 + 0.25 * len(labels))
    shares = [100 * count / max(train.get("rows") or 0, 1) for count in counts]
    bars = axis.barh(range(len(labels)), shares)
    axis.bar_label(bars, fmt="%.1f%%", fontsize=7, padding=2)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("share of train texts with the label (%)")
    axis.set_title("Label frequency (train)")
    lines += [figures.save(figure, "data_label_frequency", "label frequency"), ""]

    targets = _train_targets(train.get("path"), labels)
    if targets is not None and len(targets):
        lines += cooccurrence_lines(targets, labels, figures)
    return lines


def _train_targets(path, labels: list):
    if not path or not Path(path).is_file():
        return None
    return read_multi_label_split(path, labels)[1]


def cooccurrence_lines(targets, labels: list, figures: Figures) -> list[str]:
    """P(column label | row label) on train: how often a text with one label also has the other."""
    import numpy as np

    targets = np.asarray(targets, dtype=np.float64)
    together = targets.T @ targets
    support = np.diag(together).copy()
    conditional = together / np.maximum(support[:, None], 1)
    np.fill_diagonal(conditional, np.nan)
    size = 3 + 0.28 * len(labels)
    figure, (axis,) = figures.new(size + 1.2, size)
    image = axis.imshow(
        conditional,
        cmap="Purples",
        vmin=0,
        vmax=max(float(np.nanmax(conditional)), 1e-9) if np.isfinite(conditional).any() else 1,
    )
    axis.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.set_xlabel("also has label")
    axis.set_ylabel("text with label")
    axis.set_title("Label co-occurrence on train: P(column | row)")
    figure.colorbar(image, ax=axis, label="share of the row label's texts")
    per_text = targets.sum(axis=1)
    lines = [
        f"Labels per train text: mean {per_text.mean():.2f}, "
        f"{100 * (per_text > 1).mean():.1f}% of texts have more than one, "
        f"{100 * (per_text == 0).mean():.1f}% none.",
        "",
        figures.save(figure, "data_label_cooccurrence", "label co-occurrence"),
        "",
    ]
    return lines


def winner_lines(selection: "SelectionResult", labels: list, figures: Figures) -> list[str]:
    """Per label for the chosen model: test support, shipped threshold, precision, recall, F1, AUC; and a chart."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    winner = selection.winner
    row = selection.row(winner)
    if row is None or row.error is not None:
        return []
    thresholds = (row.decision.thresholds if row.decision is not None else None) or {}
    proba = truth = None
    if row.test_proba and Path(row.test_proba).is_file() and Path(row.test_labels or "").is_file():
        proba, truth = np.load(row.test_proba), np.load(row.test_labels)
    table_rows, f1s = [], []
    for index, label in enumerate(labels):
        support = int(truth[:, index].sum()) if truth is not None else None
        auc = (
            roc_auc_score(truth[:, index], proba[:, index])
            if truth is not None and 0 < support < len(truth)
            else float("nan")
        )
        f1 = row.test.get(per_class_key("f1", label), float("nan"))
        f1s.append(f1)
        table_rows.append(
            [
                label,
                support,
                thresholds.get(label),
                row.test.get(per_class_key("precision", label)),
                row.test.get(per_class_key("recall", label)),
                f1,
                auc,
            ]
        )
    lines = [
        f"### Chosen model on test, per label: {winner}",
        "",
        "At the per-label thresholds it ships (each chosen on val for that label's F1).",
        "",
        table(["label", "test texts", "threshold", "precision", "recall", "F1", "AUC"], table_rows),
        "",
    ]
    figure, (axis,) = figures.new(7, 1.5 + 0.25 * len(labels))
    order = np.argsort(np.nan_to_num(np.asarray(f1s, dtype=float), nan=-1))[::-1]
    bars = axis.barh(range(len(labels)), [f1s[i] for i in order])
    axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    axis.set_yticks(range(len(labels)), [labels[i] for i in order], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1.1)
    axis.set_xlabel("F1 on test at the shipped threshold")
    axis.set_title(
        f"Per-label F1: {winner} (micro {row.test.get('f1_micro', float('nan')):.3f}, "
        f"macro {row.test.get('f1_macro', float('nan')):.3f})"
    )
    lines += [figures.save(figure, "per_label_f1", "per-label F1"), ""]
    return lines
