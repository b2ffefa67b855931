"""Choose a candidate's decision rule on the val split: what turns its probabilities into the label it answers.

Argmax answers the majority class for every text when the model's probabilities never cross 0.5 for a rare
class (a model with a good AUC can do that on imbalanced data), so each candidate ships a rule chosen on val:

- binary: a threshold on the positive class's probability that maximises ``metric`` on val (default
  ``f1_macro``), each candidate judged by the metric *averaged over its neighbouring candidates*, the
  SMOOTHING_SHARE of candidates on either side (candidates lie between neighbouring val scores, so this is
  about that share of val texts). On a small val split the single best cut often separates a few rare-class
  texts from majority-class texts with almost the same score, in an order that is chance (docs/performance.md,
  "Decision rules", has the case); such a peak is narrow, a real edge between the classes holds over
  neighbouring cuts. Argmax (0.5) stays unless the chosen threshold beats it on val.
- multi-label: a threshold per label on its own probability. For ``f1_macro`` and ``f1_weighted`` each label
  takes the threshold that maximises its own F1 on val (both averages are then the best any per-label
  thresholds give); for ``f1_micro`` the thresholds maximise F1 over every label decision pooled, found one
  label at a time with the others fixed until none moves. Pooled F1 asks for higher thresholds on rare labels
  (a false positive there costs what it costs on a frequent label; measured in docs/performance.md). A label
  without a positive val text keeps 0.5. ``multiclass_rule`` does not apply.
- multiclass: argmax, or (``multiclass_rule=prior_correction``) argmax of probability / train prior^a, the
  strength ``a`` in PRIOR_STRENGTHS picked on val; ``auto`` keeps the correction only when it beats argmax on
  val. A positive ``a`` moves answers towards rare classes (a model trained with plain cross-entropy answers
  the majority too often); a negative one back towards the prior: a model trained with the logit-adjusted loss
  answers rare classes too often for F1 (its probabilities are the balanced posterior; ``a = -1`` is the
  train-prior posterior again, Menon et al. 2021's post-hoc adjustment in reverse).

The rule is applied by :func:`finetune.serve.score.decide`, the function the endpoint runs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from finetune.config.schema import MULTICLASS_RULES
from finetune.errors import UserError
from finetune.selection.decisions import DecisionRule, DecisionSettings
from finetune.selection.metrics import METRIC_NAMES, RANKING_METRICS, decision_metrics, multi_label_metrics
from finetune.serve.score import decide

DECISION_METRICS = tuple(name for name in METRIC_NAMES if name not in RANKING_METRICS)
MULTI_LABEL_DECISION_METRICS = ("f1_macro", "f1_weighted", "f1_micro")
# Rounds of the one-label-at-a-time search for f1_micro; it settles in two or three on GoEmotions.
MAX_ROUNDS = 20
PRIOR_STRENGTHS = (-1.0, -0.5, 0.5, 1.0)
# More distinct thresholds than this are thinned to quantiles: the choice is as good and stays fast.
MAX_THRESHOLDS = 400
# Binary thresholds: the share of candidate cuts on each side that a cut's val metric is averaged with.
# 2 % kept the imbalanced set's fine-tuned model off its lucky cut (test F1 macro 0.82 vs 0.69, negative recall
# 0.73 vs 0.27); on 150 logistic regressions of scripts/bench_threshold_rule.py it costs 0.005 +- 0.003 test F1
# macro against the plain best cut and finds more negatives (recall 0.40 vs 0.35).
SMOOTHING_SHARE = 0.02


def check_config(metric: str, multiclass_rule: str, task: str = "auto") -> List[str]:
    """Problems with the decision settings for ``task`` (single_label | multi_label | auto: not known yet)."""
    problems = _metric_problems(metric, task)
    if multiclass_rule not in MULTICLASS_RULES:
        problems.append(f"select.multiclass_rule={multiclass_rule}: use one of {', '.join(MULTICLASS_RULES)}")
    return problems


def _metric_problems(metric: str, task: str) -> List[str]:
    allowed = {
        "single_label": DECISION_METRICS,
        "multi_label": MULTI_LABEL_DECISION_METRICS,
        "auto": DECISION_METRICS + ("f1_micro",),
    }.get(task, DECISION_METRICS)
    if metric in allowed:
        return []
    return [
        f"select.decision_metric={metric}: unknown or not a metric of decided labels"
        f"{' for multi-label data' if task == 'multi_label' else ''}; use one of {', '.join(allowed)}"
    ]


def _require(metric: str, task: str):
    """With ``dataset.task=auto`` the plan could not tell the task: the data stage's choice is checked here."""
    problems = _metric_problems(metric, task)
    if problems:
        raise UserError(problems[0])


def choose_rule(y_val, proba_val, labels: Sequence[str], task: str, settings: DecisionSettings) -> DecisionRule:
    """The rule chosen on val for ``task`` with ``settings``; columns of ``proba_val`` in ``labels`` order."""
    if task == "multi_label":
        return choose_label_thresholds(y_val, proba_val, labels, settings.metric)
    return choose_decision(y_val, proba_val, labels, settings.metric, settings.multiclass_rule, settings.train_counts)


def choose_decision(
    y_val: Sequence[int],
    proba_val,
    labels: Sequence[str],
    metric: str = "f1_macro",
    multiclass_rule: str = "auto",
    train_counts: Dict[str, int] | None = None,
) -> DecisionRule:
    """The single-label rule that maximises ``metric`` on val, with its val figures (see :class:`DecisionRule`)."""
    import numpy as np

    _require(metric, "single_label")
    y_val = np.asarray(y_val)
    proba_val = np.asarray(proba_val, dtype=np.float64)
    labels = [str(label) for label in labels]

    def score(decision: DecisionRule) -> float:
        return decision_metrics(y_val, decide(proba_val, labels, decision.to_dict()), len(labels))[metric]

    argmax = DecisionRule()
    at_argmax = score(argmax)
    best, best_value = argmax, at_argmax
    if len(np.unique(y_val)) < 2:
        pass  # nothing to tune on a val split with one class: argmax
    elif len(labels) == 2:
        best, best_value = _best_threshold(y_val, proba_val, labels, metric, at_argmax)
    elif multiclass_rule != "argmax":
        counts = np.array([max(1, (train_counts or {}).get(label, 0)) for label in labels], dtype=np.float64)
        if train_counts is None:
            counts = np.bincount(y_val, minlength=len(labels)).astype(np.float64).clip(min=1)
        priors = counts / counts.sum()
        tried = []
        for strength in PRIOR_STRENGTHS:
            weights = priors**-strength
            decision = DecisionRule(
                "class_weights",
                prior_strength=strength,
                weights={label: round(float(w / weights.max()), 6) for label, w in zip(labels, weights)},
            )
            tried.append((score(decision), strength, decision))
        # Ties go to the weakest correction.
        value, _, decision = max(tried, key=lambda item: (item[0], -abs(item[1])))
        if multiclass_rule == "prior_correction" or value > best_value:
            best, best_value = decision, value
    return best.with_val(metric, best_value, at_argmax)


def choose_label_thresholds(y_val, proba_val, labels: Sequence[str], metric: str = "f1_macro") -> DecisionRule:
    """The multi-label rule: per-label thresholds that maximise ``metric`` on val (see the module docstring)."""
    import numpy as np

    _require(metric, "multi_label")
    y_val = np.asarray(y_val, dtype=np.int64)
    proba_val = np.asarray(proba_val, dtype=np.float64)
    tunable = [column for column in range(len(labels)) if 0 < y_val[:, column].sum() < len(y_val)]
    thresholds = np.full(len(labels), 0.5)
    for column in tunable:
        truth, scores = y_val[:, column], proba_val[:, column]
        # Every cut, not MAX_THRESHOLDS quantiles: F1 at all cuts is one sort, and quantiles of all texts leave a
        # label seen in 0.2 % of them about one cut among its positives (GoEmotions' one-liner: test F1 macro
        # 0.4622 thinned, 0.4708 exact). The binary rule's smoothing is not used here: a share of all cuts spans
        # far more texts than a rare label's positives (0.02: test F1 macro 0.4339 on the same model), and a few
        # cuts did not help either (20 random halves of GoEmotions' dev, chosen on one, scored on the other:
        # macro F1 +0.001 +- 0.002 for MiniLM at 2 to 5 cuts and lower past that, the one-liner lower at all).
        cuts = _cuts(scores, most=None)
        thresholds[column] = _middle_of_best(cuts, _f1_at_cuts(truth, scores, cuts))
    if metric == "f1_micro":
        thresholds = _pooled_f1_thresholds(y_val, proba_val, thresholds, tunable)
    decision = DecisionRule(
        "per_label_thresholds", thresholds={str(label): float(value) for label, value in zip(labels, thresholds)}
    )
    at_rule = multi_label_metrics(y_val, proba_val, decide(proba_val, list(labels), decision.to_dict()))[metric]
    at_half = multi_label_metrics(y_val, proba_val)[metric]
    return decision.with_val(metric, at_rule, at_half)


def _pooled_f1_thresholds(y_val, proba_val, thresholds, tunable):
    """Thresholds that maximise micro F1, one label at a time with the others fixed (each step cannot lower
    it), from the per-label thresholds, until a round moves none."""
    thresholds = thresholds.copy()
    positives = y_val.sum()
    # A label's hits and answers at each of its cuts do not depend on the other labels' thresholds.
    at_cuts = {}
    for column in tunable:
        cuts = _cuts(proba_val[:, column], most=None)
        at_cuts[column] = (cuts, *_hits_at_cuts(y_val[:, column], proba_val[:, column], cuts))
    truth = y_val == 1
    decided = proba_val >= thresholds
    # Pooled counts, kept up to date as columns move rather than recounted over the whole matrix per label.
    hits_total, answered_total = (decided & truth).sum(), decided.sum()
    for _ in range(MAX_ROUNDS):
        moved = False
        for column in tunable:
            cuts, hits, answered = at_cuts[column]
            hits_elsewhere = hits_total - (decided[:, column] & truth[:, column]).sum()
            answered_elsewhere = answered_total - decided[:, column].sum()
            now = 2 * hits_total / (answered_total + positives)
            pooled = 2 * (hits_elsewhere + hits) / (answered_elsewhere + answered + positives)
            if pooled.max() > now + 1e-12:
                thresholds[column], moved = _middle_of_best(cuts, pooled), True
                decided[:, column] = proba_val[:, column] >= thresholds[column]
                hits_total = hits_elsewhere + (decided[:, column] & truth[:, column]).sum()
                answered_total = answered_elsewhere + decided[:, column].sum()
        if not moved:
            break
    return thresholds


def _hits_at_cuts(truth, scores, cuts):
    """True positives and positive answers of ``scores >= cut`` for every cut, in one sort: 28 labels x 1,000 cuts
    x 5k val texts would otherwise be 140M comparisons."""
    import numpy as np

    order = np.argsort(scores, kind="stable")
    positives_below = np.concatenate([[0], np.cumsum(truth[order])])
    below = np.searchsorted(scores[order], cuts, side="left")
    return positives_below[-1] - positives_below[below], len(scores) - below


def _f1_at_cuts(truth, scores, cuts):
    """F1 of ``scores >= cut`` for every cut."""
    import numpy as np

    hits, answered = _hits_at_cuts(truth, scores, cuts)
    total = truth.sum() + answered
    return np.divide(2 * hits, total, out=np.zeros(len(cuts)), where=total > 0)


def _cuts(scores, most: Optional[int] = MAX_THRESHOLDS):
    """Candidate thresholds: midway between neighbouring distinct scores, plus below the lowest and above the
    highest; thinned to quantiles past ``most`` (None: never)."""
    import numpy as np

    scores = np.unique(scores)
    if most is not None and len(scores) > most:
        scores = np.unique(np.quantile(scores, np.linspace(0, 1, most)))
    return np.concatenate([[scores[0] / 2], (scores[:-1] + scores[1:]) / 2, [(scores[-1] + 1) / 2]])


def _middle_of_best(cuts, values) -> float:
    """The middle of the longest run of consecutive best thresholds: the choice least tied to single val texts."""
    import numpy as np

    best = np.flatnonzero(values >= values.max() - 1e-12)  # a running mean's rounding must not split a run
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    run = max(runs, key=len)
    return float((cuts[run[0]] + cuts[run[-1]]) / 2)


def _best_threshold(y_val, proba_val, labels: List[str], metric: str, at_argmax: float):
    import numpy as np

    rule = DecisionRule("threshold", positive_label=labels[1])
    cuts = _cuts(proba_val[:, 1])
    values = np.array(
        [
            decision_metrics(y_val, decide(proba_val, labels, replace(rule, threshold=cut).to_dict()), 2)[metric]
            for cut in cuts
        ]
    )
    # A share of 0 is the plain best cut (scripts/bench_threshold_rule.py compares with it).
    reach = max(1, round(SMOOTHING_SHARE * len(cuts))) if SMOOTHING_SHARE > 0 else 0
    # Past the ends every threshold gives the labels of the end itself.
    averaged = np.convolve(np.pad(values, reach, mode="edge"), np.ones(2 * reach + 1) / (2 * reach + 1), "valid")
    decision = replace(rule, threshold=_middle_of_best(cuts, averaged))
    value = decision_metrics(y_val, decide(proba_val, labels, decision.to_dict()), 2)[metric]
    if value <= at_argmax:
        # 0.5 is argmax for two classes.
        return replace(rule, threshold=0.5), at_argmax
    return decision, value


def describe(decision: Optional[DecisionRule]) -> str:
    """The rule in a few words, for tables: ``P(positive) >= 0.83``, ``argmax``, ``argmax of P / prior^1``."""
    decision = decision or DecisionRule()
    if decision.rule == "threshold":
        return f"P({decision.positive_label}) >= {decision.threshold:.3f}"
    if decision.rule == "class_weights":
        return f"argmax of P / prior^{decision.prior_strength if decision.prior_strength is not None else '?'}"
    if decision.rule == "per_label_thresholds":
        values = list(decision.thresholds.values())
        return f"per-label P >= t (t {min(values):.2f}..{max(values):.2f})"
    return "argmax"
