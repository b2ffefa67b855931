"""Test every candidate on the test split with the one metric function, and decide what to ship.

The candidates of this run (fine-tuned transformer, AutoML baseline) and the model currently in
production are scored on the same test split by :func:`finetune.selection.metrics.classification_metrics`; the
best by ``select.metric`` wins. A new model replaces production only when it beats production by more
than ``select.margin``: re-deploying an equivalent model costs a rollout and gains nothing.

Ties are broken explicitly, so the same scores always give the same verdict:
1. the production model (a tie is no reason to churn);
2. then the fine-tuned transformer (``family == "hf"``) over the AutoML baseline;
3. then by candidate name.
Scores tie when equal as floats; scoring is deterministic on one machine, so a re-scored copy of the
same model ties exactly, and near-ties with production are the margin's business.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from finetune.data import read_targets
from finetune.errors import UserError
from finetune.plan.results import SelectionResult, SelectionRow
from finetune.selection.decisions import DecisionRule, DecisionSettings, Verdict, recorded_rule
from finetune.selection.metrics import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    MULTI_LABEL_METRIC_NAMES,
    NER_METRIC_NAMES,
    metric_names,
    task_metrics,
)
from finetune.selection.rules import check_config as check_decision
from finetune.selection.rules import choose_rule, describe
from finetune.serve import score
from finetune.serve.score import decide, read_candidate

if TYPE_CHECKING:
    import numpy

PRODUCTION = "production"
# The fine-tuned transformer, on either launcher.
FINETUNED = "finetuned"
# Higher is better for every one of them: hamming_loss is reported, not selected by.
SELECTABLE = tuple(name for name in MULTI_LABEL_METRIC_NAMES + NER_METRIC_NAMES if name not in LOWER_IS_BETTER)
BATCH_SIZE = 32  # texts per forward pass
CHUNK = 512  # texts per tokenizer call
# What the comparison table shows beside the selection metric, where a task differs from single-label's.
TABLE_COLUMNS = {
    "multi_label": ("f1_micro", "f1_macro", "auc_weighted"),
    "ner": ("precision_entity", "recall_entity", "f1_macro_entity"),
}


def check_config(select_cfg, task: str = "auto") -> list[str]:
    """Problems with the select settings for ``task`` (auto: the data stage decides)."""
    problems = check_decision(select_cfg.decision_metric, select_cfg.multiclass_rule, task)
    if select_cfg.margin < 0:
        problems.append(
            f"select.margin={select_cfg.margin}: must be >= 0 (a negative margin would replace "
            "production with a worse model)"
        )
    if select_cfg.metric not in SELECTABLE:
        problems.append(
            f"select.metric={select_cfg.metric}: unknown; use one of {', '.join(METRIC_NAMES)} (and for "
            f"multi-label data {', '.join(n for n in MULTI_LABEL_METRIC_NAMES if n not in METRIC_NAMES + LOWER_IS_BETTER)}; "
            f"for NER {', '.join(NER_METRIC_NAMES)})"
        )
    elif task != "auto" and (task == "ner") != (select_cfg.metric in NER_METRIC_NAMES):
        # Entity metrics exist for NER only, and NER has no other: refused now, not after training.
        problems.append(
            f"select.metric={select_cfg.metric}: not a metric of {task} data; use one of "
            f"{', '.join(name for name in metric_names(task) if name not in LOWER_IS_BETTER)}"
        )
    return problems


def candidate_info(candidate_dir) -> dict:
    """``candidate.json`` of a candidate folder (family and labels in id order)."""
    if not (Path(candidate_dir) / "candidate.json").is_file():
        raise UserError(f"{candidate_dir}: not a candidate (no candidate.json)")
    return read_candidate(candidate_dir)


def load_scorer(candidate_dir):
    """The scoring script's own model class for a candidate folder, so test metrics are those of the code
    that will serve the model: same truncation length, runtime (torch or ONNX Runtime) and decision rule."""
    folder = Path(candidate_dir)
    info = candidate_info(folder)
    if info.get("family") not in ("hf", "automl"):
        raise UserError(f"{candidate_dir}: unknown candidate family '{info.get('family')}' (expected hf or automl)")
    return score.load_scorer(folder, max_batch=BATCH_SIZE)


def scorer_proba(scorer, texts) -> "numpy.ndarray":
    """Class probabilities (n_texts x n_labels, columns in the candidate's label order) for raw texts."""
    import numpy as np

    texts = list(texts)
    # The scorer tokenizes a request at once; chunks keep a large split's padded tensors small.
    chunks = [scorer.predict_proba(texts[start : start + CHUNK]) for start in range(0, len(texts), CHUNK)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(scorer.labels)))


def predict_proba(candidate_dir, texts) -> "numpy.ndarray":
    """Class probabilities of a candidate folder for raw texts (see :func:`load_scorer`)."""
    return scorer_proba(load_scorer(candidate_dir), texts)


def evaluate(
    candidates: dict,
    test_csv,
    labels: list[str],
    proba_dir: Optional[Path] = None,
    *,
    val_csv=None,
    settings: Optional[DecisionSettings] = None,
    keep_rule=(),
    task: str = "single_label",
) -> dict:
    """Score each candidate folder on the test split at its decision rule: ``{name: {"family", "decision",
    "test", "test_argmax"}}`` (``decision``: the rule as candidate.json has it).

    With ``val_csv`` and ``settings``, each candidate not named in ``keep_rule`` first gets its
    rule chosen on val and written into its ``candidate.json`` (what registration then ships); the others
    (the production model) keep the rule they were shipped with. ``test`` holds the metrics at the rule,
    ``test_argmax`` those at argmax, to show what the rule changed.
    A candidate that cannot be scored (folder missing, load error, labels that are not this run's)
    gets ``{"family", "error"}`` instead, so one broken candidate does not stop the others. With
    ``proba_dir``, the true label ids go to ``test_labels.npy`` and each candidate's probabilities to
    ``<name>_test_proba.npy`` (paths under ``test_labels`` / ``test_proba``) for the report's plots.
    ``task="multi_label"``: targets are 0/1 label matrices, the rule is per-label thresholds for
    ``settings.metric`` (:func:`finetune.selection.rules.choose_label_thresholds`) and ``test_argmax`` holds the
    metrics at 0.5.
    """
    import numpy as np

    texts, y_true = read_targets(test_csv, labels, task)
    y_true = np.asarray(y_true)
    val_texts, y_val = read_targets(val_csv, labels, task) if val_csv is not None and settings else (None, None)
    if proba_dir is not None:
        proba_dir = Path(proba_dir)
        proba_dir.mkdir(parents=True, exist_ok=True)
        np.save(proba_dir / "test_labels.npy", y_true)
    results = {}
    for name, path in candidates.items():
        family = None
        try:
            info = candidate_info(path)
            family = info["family"]
            if sorted(info["labels"]) != sorted(labels):
                raise UserError(f"its labels {info['labels']} are not this run's {labels}")
            if info.get("task", "single_label") != task:
                raise UserError(f"it is a {info.get('task', 'single_label')} model, this run's data is {task}")
            scorer = load_scorer(path)
            # Columns follow the candidate's label order; metrics and rules here use this run's id order.
            columns = [info["labels"].index(label) for label in labels]
            rule = DecisionRule.from_dict(info.get("decision") or scorer.decision)
            if val_texts is not None and name not in keep_rule:
                rule = choose_rule(y_val, scorer_proba(scorer, val_texts)[:, columns], labels, task, settings)
                info["decision"] = rule.to_dict()
                (Path(path) / "candidate.json").write_text(json.dumps(info, indent=2))
            proba = scorer_proba(scorer, texts)[:, columns]
            results[name] = {"family": family, **test_at_rule(y_true, proba, labels, task, rule)}
            if proba_dir is not None:
                proba_path = proba_dir / f"{name}_test_proba.npy"
                np.save(proba_path, proba)
                results[name].update(test_proba=str(proba_path), test_labels=str(proba_dir / "test_labels.npy"))
        except Exception as error:  # noqa: BLE001 - any failure of one candidate is reported, not fatal
            message = f"{type(error).__name__}: {error}" if not isinstance(error, UserError) else str(error)
            print(f"candidate '{name}' could not be scored: {message}", flush=True)
            results[name] = {"family": family, "error": message}
    return results


def test_at_rule(y_true, proba, labels: list[str], task: str, rule: DecisionRule) -> dict:
    """``decision`` (``rule`` as candidate.json has it), ``test`` (the metrics at ``rule``) and ``test_argmax`` (at
    argmax, or 0.5 per label) of test-split probabilities: one candidate's entry of :func:`evaluate`, wherever its
    probabilities came from."""
    shipped = rule.to_dict()
    return {
        "decision": shipped,
        "test": task_metrics(task, y_true, proba, decide(proba, labels, shipped), labels=labels),
        "test_argmax": task_metrics(task, y_true, proba, labels=labels),
    }


def _score(entry: dict, metric: str) -> float:
    value = entry["test"][metric]
    return -math.inf if value is None or math.isnan(value) else value


def choose(
    results: dict,
    metric: str = "auc_weighted",
    margin: float = 0.0,
    production_name: Optional[str] = None,
    task: str = "single_label",
) -> SelectionResult:
    """Pick the model to ship from :func:`evaluate` results (its ``to_dict()`` is the ``selection`` section).

    The :class:`Verdict` is ``REGISTER`` (a new model: the best new candidate, which beats production by more
    than ``margin`` or there is no production to beat) or ``KEEP_PRODUCTION``. A candidate that failed
    is listed with its error; only when nothing could be scored is that a :class:`UserError`.
    """
    legal = [name for name in metric_names(task) if name not in LOWER_IS_BETTER]
    if metric not in legal:
        raise UserError(f"select.metric={metric}: not a metric of {task} data; use one of {', '.join(legal)}")
    scored = {name: entry for name, entry in results.items() if "test" in entry}
    failed = {name: entry["error"] for name, entry in results.items() if "test" not in entry}
    if not scored:
        detail = "; ".join(f"{name}: {error}" for name, error in failed.items()) or "no candidates"
        raise UserError(f"no candidate could be scored on the test split ({detail})")

    def family(name: str) -> str:
        return PRODUCTION if name == production_name else results[name]["family"]

    def rank(name: str):
        return (-_score(scored[name], metric), name != production_name, family(name) != "hf", name)

    ranked = sorted(scored, key=rank)
    new = [name for name in ranked if name != production_name]
    has_production = production_name in scored
    if not new:
        verdict, winner = Verdict.KEEP_PRODUCTION, production_name
        reason = "no new candidate could be scored; the production model stays"
    elif not has_production:
        verdict, winner = Verdict.REGISTER, new[0]
        reason = f"{new[0]} has the best test {metric} ({_score(scored[new[0]], metric):.4f}); " + (
            f"the production model could not be scored ({failed[production_name]})"
            if production_name in failed
            else "there is no production model yet"
        )
    else:
        best, current = _score(scored[new[0]], metric), _score(scored[production_name], metric)
        if best > current + margin:
            verdict, winner = Verdict.REGISTER, new[0]
            reason = f"{new[0]} beats production on test {metric}: {best:.4f} > {current:.4f} + margin {margin:g}"
        else:
            verdict, winner = Verdict.KEEP_PRODUCTION, production_name
            reason = (
                f"best new candidate {new[0]} ({best:.4f}) does not beat production ({current:.4f}) "
                f"by more than the margin {margin:g} on test {metric}; nothing is deployed"
            )

    table = [
        SelectionRow(
            candidate=name,
            family=family(name),
            test=scored[name]["test"],
            decision=recorded_rule(scored[name].get("decision")),
            **{key: scored[name].get(key) for key in ("test_argmax", "test_proba", "test_labels")},
        )
        for name in ranked
    ]
    table += [SelectionRow(candidate=name, family=family(name), error=error) for name, error in failed.items()]
    selection = SelectionResult(
        metric=metric,
        task=task,
        margin=margin,
        production=production_name,
        table=table,
        winner=winner,
        verdict=verdict,
        reason=reason,
    )
    print(format_table(selection), flush=True)
    return selection


def format_table(selection: SelectionResult) -> str:
    """The comparison as fixed-width text: one row per candidate, the selection metric first."""
    metric = selection.metric
    shown = TABLE_COLUMNS.get(selection.task, ("accuracy", "f1_macro", "auc_weighted"))
    columns = [metric] + [name for name in shown if name != metric]
    header = ["candidate", "family", *columns, "decision"]
    rows = []
    for row in selection.table:
        name = row.candidate + (" *" if row.candidate == selection.winner else "")
        cells = (
            [f"failed: {row.error}"]
            if row.error is not None
            else [f"{row.test[c]:.4f}" for c in columns] + [describe(row.decision)]
        )
        rows.append([name, str(row.family or "?"), *cells])
    # The last cell of a row is not padded, so an error message does not widen the metric columns.
    widths = [len(cell) for cell in header]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row))
        for row in [header, *rows]
    ]
    return "\n".join(lines + [f"decision: {selection.verdict} ({selection.reason})"])


def check_production_labels(production, labels: list[str], replace_incompatible: bool):
    """``production``, or None when its label set differs from ``labels`` and replacing it was asked for.

    A model for other labels answers a different question; it must not be replaced silently (a second
    dataset registered under the same name would win because production "could not be scored"), so
    without ``select.replace_incompatible=true`` this is a :class:`UserError`.
    """
    if production is None:
        return None
    theirs = [str(label) for label in candidate_info(production.path)["labels"]]
    if sorted(theirs) == sorted(labels):
        return production
    if replace_incompatible:
        print(
            f"production model {production.name} version {production.version} has labels {theirs}, this "
            f"run's are {labels}; select.replace_incompatible=true: it will be replaced",
            flush=True,
        )
        return None
    raise UserError(
        f"production model '{production.name}' (version {production.version}) has labels {theirs}, "
        f"this run's data has {labels}; register under another name (select.registered_model_name=...) "
        "or replace it on purpose with select.replace_incompatible=true"
    )
