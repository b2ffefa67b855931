"""The report's decision sections: every candidate on the test split and why one was chosen, what was
registered, and how the rollout went."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from finetune.report.common import FAMILY_DESCRIPTIONS, Figures, table
from finetune.report.multilabel import winner_lines
from finetune.selection.metrics import per_class_key
from finetune.selection.rules import describe
from finetune.serve.score import decide

if TYPE_CHECKING:
    from finetune.plan.results import Candidate, SelectionResult, SelectionRow
    from finetune.plan.summary import RunSummary


def selection_section(summary: "RunSummary", figures: Figures) -> list[str]:
    selection, candidates = summary.selection, summary.candidates
    if selection is None:
        if not candidates:
            return []
        rows = [
            [name, describe_candidate(c.family, c), (c.val or {}).get("auc_weighted")] for name, c in candidates.items()
        ]
        return ["## Candidates", "", table(["candidate", "what", "val auc_weighted"], rows), ""]
    metric, winner = selection.metric, selection.winner
    labels = summary.data.labels if summary.data is not None else []
    multi_label = summary.data is not None and summary.data.task == "multi_label"
    columns = list(
        dict.fromkeys(
            [metric, "f1_micro", "f1_macro", "accuracy", "hamming_loss", "auc_weighted", "auc_micro"]
            if multi_label
            else [metric, "accuracy", "f1_macro", "recall_macro", "auc_weighted", "average_precision_weighted"]
        )
    )
    rows = []
    for row in selection.table:
        name = row.candidate
        label = f"**{name}** (chosen)" if name == winner else name
        candidate = candidates.get(name)
        description = describe_candidate(row.family, candidate)
        val = ((candidate.val if candidate is not None else None) or {}).get(metric)
        if row.error is not None:
            rows.append([label, description, val, f"failed: {row.error}", *[""] * (len(columns) + 2)])
        else:
            recall = (
                "per label below"
                if multi_label
                else " / ".join(f"{row.test.get(per_class_key('recall', label), float('nan')):.2f}" for label in labels)
            )
            at_argmax = (row.test_argmax or {}).get("f1_macro")
            rows.append(
                [
                    label,
                    description,
                    val,
                    *(row.test.get(c) for c in columns),
                    describe(row.decision),
                    recall,
                    at_argmax,
                ]
            )
    lines = [
        "## Candidates on the test split",
        "",
        f"Every candidate scored on the same test split by one metric function; chosen by test `{metric}` "
        f"(margin over production: {selection.margin:g}). Label metrics are at the decision rule "
        "each candidate ships (chosen on val; the endpoint answers with it); AUC and average precision rank "
        "probabilities and do not depend on it."
        + (
            " Multi-label: `accuracy` is subset accuracy (every label of a text right), `hamming_loss` the "
            "share of wrong label decisions (lower is better), micro averages pool every label decision."
            if multi_label
            else ""
        ),
        "",
        table(
            [
                "candidate",
                "what",
                f"val {metric}",
                *(f"test {c}" for c in columns),
                "decision rule",
                "test recall" if multi_label else f"test recall ({' / '.join(labels)})",
                "test f1_macro at 0.5" if multi_label else "test f1_macro at argmax",
            ],
            rows,
        ),
        "",
        f"**Decision: {selection.verdict}** — {selection.reason}",
        "",
    ]

    scored = selection.scored
    figure, (axis,) = figures.new(7, 2 + 1.1 * len(scored))
    shown = list(dict.fromkeys([metric, "f1_micro", "f1_macro"] if multi_label else [metric, "accuracy", "f1_macro"]))
    height = 0.8 / len(shown)
    for index, name in enumerate(shown):
        positions = [i + (index - (len(shown) - 1) / 2) * height for i in range(len(scored))]
        bars = axis.barh(positions, [row.test[name] for row in scored], height, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    axis.set_yticks(
        range(len(scored)), [f"{row.candidate}{' (chosen)' if row.candidate == winner else ''}" for row in scored]
    )
    axis.invert_yaxis()
    axis.set_xlim(0, 1.12)
    axis.set_xlabel("score on test (0–1)")
    axis.set_title("Candidates on the test split")
    axis.legend(title="metric", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=len(shown), fontsize=8)
    lines += [figures.save(figure, "candidates", "candidates on test"), ""]

    if multi_label:
        return lines + winner_lines(selection, labels, figures)
    lines += _winner_plots(selection, labels, figures)
    return lines


def describe_candidate(family: Optional[str], candidate: Optional["Candidate"]) -> str:
    description = candidate.extra.get("description") if candidate is not None else None
    return description or FAMILY_DESCRIPTIONS.get(family or "", family or "unknown")


def _load_predictions(row: Optional["SelectionRow"]):
    import numpy as np

    paths = [row.test_proba, row.test_labels] if row is not None else [None, None]
    if not all(path and Path(path).is_file() for path in paths):
        return None
    return np.load(paths[0]), np.load(paths[1])


def _winner_plots(selection: "SelectionResult", labels: Optional[list], figures: Figures) -> list[str]:
    import numpy as np
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    rows = {row.candidate: row for row in selection.scored}
    winner = selection.winner
    loaded = _load_predictions(rows.get(winner))
    if loaded is None:
        return []
    proba, y_true = loaded
    labels = labels or [str(i) for i in range(proba.shape[1])]
    lines = [f"### Chosen model on test: {winner}", ""]

    # The labels the endpoint answers: the shipped rule, not argmax.
    rule = rows[winner].decision
    predicted = decide(proba, labels, rule.to_dict() if rule is not None else None)
    matrix = confusion_matrix(y_true, predicted, labels=list(range(len(labels))))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, (axis,) = figures.new(4.8 + 0.3 * len(labels), 4.2 + 0.3 * len(labels))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(
            j,
            i,
            f"{count}\n{100 * share[i, j]:.0f}%",
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.6 else "black",
        )
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"Confusion matrix: {winner} at {describe(rows[winner].decision)} (n={len(y_true)})")
    figure.colorbar(image, ax=axis, label="share of true class")
    lines += [figures.save(figure, "confusion_matrix", "confusion matrix"), ""]

    if len(np.unique(y_true)) < 2:
        return lines  # ROC is undefined with one class present
    figure, (axis,) = figures.new(5.6, 5)
    if proba.shape[1] == 2:
        # Binary: every candidate on one plot, the chosen one drawn heavier.
        for name, row in rows.items():
            predictions = (proba, y_true) if name == winner else _load_predictions(row)
            if predictions is None:
                continue
            curve_proba, curve_y = predictions
            fpr, tpr, _ = roc_curve(curve_y, curve_proba[:, 1])
            axis.plot(
                fpr,
                tpr,
                linewidth=2.5 if name == winner else 1.2,
                label=f"{name} (AUC {roc_auc_score(curve_y, curve_proba[:, 1]):.3f})",
            )
        title = f"ROC on test (positive class: {labels[1]})"
    else:
        for index, label in enumerate(labels):
            if 0 < (y_true == index).sum() < len(y_true):
                fpr, tpr, _ = roc_curve(y_true == index, proba[:, index])
                axis.plot(
                    fpr, tpr, label=f"{label} vs rest (AUC {roc_auc_score(y_true == index, proba[:, index]):.3f})"
                )
        title = f"ROC on test, one class vs rest: {winner}"
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    lines += [figures.save(figure, "roc", "ROC curves"), ""]
    return lines


def registry_section(summary: "RunSummary") -> list[str]:
    registry = summary.registration
    if registry is None:
        return []
    if registry.version is None:
        return ["## Registry", "", f"Nothing registered: {registry.reason or registry.verdict}", ""]
    facts = [
        (
            "model",
            f"{registry.name} version {registry.version}"
            + (" (same artifacts were already registered)" if registry.existing else ""),
        ),
        ("content sha256", registry.content_sha256),
        ("git commit", registry.git_commit),
        ("artifact", registry.source),
    ]
    return ["## Registry", ""] + [f"- **{key}**: `{value}`" for key, value in facts if value] + [""]


def rollout_section(summary: "RunSummary") -> list[str]:
    if summary.rollout is None:
        return []
    deployment, rollout = summary.rollout, summary.rollout.rollout
    smoke = rollout.smoke_response
    traffic = ", ".join(f"{name} {percent}%" for name, percent in rollout.traffic.items())
    facts = [
        ("status", "succeeded"),
        ("endpoint", f"{rollout.endpoint} ({deployment.target})"),
        ("deployment", rollout.deployment),
        ("model", f"{rollout.model.name} version {rollout.model.version}"),
        ("traffic now", traffic or None),
        ("scoring URI", rollout.scoring_uri),
        ("smoke test latency", f"{rollout.smoke_latency_ms:.1f} ms"),
        ("old deployments deleted", ", ".join(rollout.deleted) or None),
        ("serve again", f"`{deployment.serve_command}`" if deployment.serve_command else None),
    ]
    lines = ["## Endpoint", ""] + [f"- **{key}**: {value}" for key, value in facts if value]
    lines += [f"- **warning**: {warning}" for warning in rollout.warnings]
    predictions = smoke.get("predictions") if isinstance(smoke, dict) else None
    if predictions:
        lines += [
            "",
            "Smoke test predictions:",
            "",
            table(
                ["#", "label", "probabilities"],
                [
                    [
                        i,
                        ", ".join(p["labels"]) if "labels" in p else p.get("label"),
                        ", ".join(f"{k} {v:.3f}" for k, v in (p.get("probabilities") or {}).items()),
                    ]
                    for i, p in enumerate(predictions)
                ],
            ),
        ]
    if rollout.steps:
        lines += [
            "",
            "Traffic ramp:",
            "",
            table(
                ["traffic to new (%)", "requests", "errors", "seconds"],
                [[s.get("percent"), s.get("requests"), s.get("errors"), s.get("seconds")] for s in rollout.steps],
            ),
        ]
    lines.append("")

    timings = rollout.timings
    if timings.get("total_s") is not None:
        phases = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items() if k.endswith("_s") and k != "total_s")
        lines[-1:-1] = [f"Rollout took {timings['total_s']:.1f} s ({phases}).", ""]
    return lines
