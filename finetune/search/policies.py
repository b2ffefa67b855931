"""Azure ML's early-termination policies, each rule written once as a pure function over metric curves.

A *curve* is the list of primary-metric values a trial reported, in order. The optuna pruner
(:mod:`finetune.search.pruners`) and the parity tests call :func:`should_stop` with the same curves, so the
local sweep and the tests share one implementation; the AML launcher maps the same ``PolicyConfig`` to
AML's own policy objects.

Sources: Microsoft Learn, "Hyperparameter tuning a model (v2)", section "Early termination"
(learn.microsoft.com/azure/machine-learning/how-to-tune-hyperparameters), and the azureml-train-core
HyperDrive reference pages BanditPolicy, MedianStoppingPolicy and TruncationSelectionPolicy
(learn.microsoft.com/python/api/azureml-train-core/azureml.train.hyperdrive.*).

Interval. "Each time the training script logs the primary metric counts as one interval." Interval N
is the N-th report of a trial, counted from 1 (the training step or epoch behind it does not matter).
A trial's decision is taken when it reports, at its latest interval.

When a policy applies. "If specified, the policy applies every multiple of evaluation_interval that is
greater than or equal to delay_evaluation": at interval N iff N % evaluation_interval == 0 and
N >= delay_evaluation. A trial that never reaches such an interval is never stopped.

Which runs are compared. "When evaluating a run at interval N, its performance is only compared with
the performance of other runs up to interval N even if they reported metrics for intervals greater than
N" (TruncationSelectionPolicy; applied to all three rules here). So at interval N the rules use every
run that reported at least N values (running, finished or stopped, the trial itself included), each
cut to its first N values. Runs that stopped before N have no performance at N and do not take part.

Bandit. "Bandit ends runs when the primary metric isn't within the specified slack factor/slack amount
of the most successful run." "Assume that the best performing run at interval 10 reported a primary
metric 0.8 with a goal to maximize the primary metric. If the policy specifies a slack_factor of 0.2,
any training runs whose best metric at interval 10 is less than 0.66 (0.8/(1+slack_factor)) will be
terminated." With slack_amount 0.2 "any run with an AUC less than 0.6 (0.8 - 0.2) ... will be
terminated." Here: best_r = the best of a run's first N values, ref = the best best_r over the compared
runs. Maximize: stop if best_trial < ref / (1 + slack_factor), or best_trial < ref - slack_amount.
Minimize (not spelled out by AML; the mirror image): stop if best_trial > ref * (1 + slack_factor), or
best_trial > ref + slack_amount. Equal to the threshold is within the slack. slack_factor assumes a
positive metric, as every val_* metric is.

Median stopping. "A run will be canceled at interval N if its best primary metric reported up to
interval N is worse than the median of the running averages for intervals 1:N across all runs."
Here: median of mean(first N values) over the compared runs; stop if the trial's best of its first N
values is strictly worse than that median (a tie is not worse).

Truncation selection. "Cancels a percentage of lowest performing runs at each evaluation interval."
"A run terminates at interval 5 if its performance at interval 5 is in the lowest 20% of performance of
all runs at interval 5." exclude_finished_jobs: "specifies whether to exclude finished jobs when
applying the policy". Here: the performance of a run at N is the value it reported at N; the population
is the compared runs, minus finished runs (completed, stopped or failed) when exclude_finished_jobs is
true (the trial being decided always counts). With k runs, the lowest floor(k * truncation_percentage
/ 100) are cut; the trial is among them iff the runs performing no better than it (itself included)
are at most that many. So ties are never split (two equal runs are both kept or both cut) and nothing
is cut while k < 100 / truncation_percentage.

A NaN report (e.g. AUC with one class in the split) counts as the worst possible value.

Ties are decimal ties. The documents state thresholds in decimal ("less than 0.6 (0.8 - 0.2)"; a run's best
against "the median of the running averages"), but 0.8 - 0.2 is 0.6000000000000001 and the mean of 0.8 and 0.4
is 0.6000000000000001 in binary floating point, which stopped a run at exactly 0.6, and even a lone run whose
constant curve is "worse" than its own average. A value within TIE (relative) of a Bandit limit or of the median
is a tie, and a tie is not worse. (Found by tests/test_aml_policies.py against the emulator's independent reading.)
"""

from __future__ import annotations

import math
import statistics
from typing import Collection, Hashable, List, Mapping, Sequence

from finetune.config.schema import POLICY_TYPES, PolicyConfig

TIE = 1e-9  # metrics carry far fewer significant digits than a double


def _worse(value: float, limit: float, maximize: bool) -> bool:
    """``value`` strictly worse than ``limit``, beyond floating-point noise."""
    if math.isclose(value, limit, rel_tol=TIE, abs_tol=TIE):
        return False
    return value < limit if maximize else value > limit


def applies_at(policy: PolicyConfig, interval: int) -> bool:
    """Whether the policy is applied at this interval (1-based count of reports)."""
    return interval >= 1 and interval % policy.evaluation_interval == 0 and interval >= policy.delay_evaluation


def should_stop(
    policy: PolicyConfig,
    goal: str,
    curves: Mapping[Hashable, Sequence[float]],
    trial: Hashable,
    finished: Collection[Hashable] = (),
) -> bool:
    """AML's decision for `trial` at its latest interval, given every run's curve known at that moment.

    `curves` maps each run (the trial included) to its reported values in order; `finished` names the
    runs that are no longer running (only truncation's exclude_finished_jobs reads it).
    """
    interval = len(curves[trial])
    if policy.type == "none" or not applies_at(policy, interval):
        return False
    maximize = goal == "maximize"
    worst = -math.inf if maximize else math.inf
    compared = {
        run: [worst if math.isnan(v) else float(v) for v in values[:interval]]
        for run, values in curves.items()
        if len(values) >= interval
    }
    better = max if maximize else min
    mine = better(compared[trial])

    if policy.type == "bandit":
        ref = better(better(values) for values in compared.values())
        if policy.slack_factor is not None:
            limit = ref / (1 + policy.slack_factor) if maximize else ref * (1 + policy.slack_factor)
        else:
            limit = ref - policy.slack_amount if maximize else ref + policy.slack_amount
        return _worse(mine, limit, maximize)

    if policy.type == "median":
        median = statistics.median(statistics.fmean(values) for values in compared.values())
        return _worse(mine, median, maximize)

    if policy.type == "truncation":
        at_interval = {
            run: values[-1]
            for run, values in compared.items()
            if run == trial or not (policy.exclude_finished_jobs and run in finished)
        }
        cut = len(at_interval) * policy.truncation_percentage // 100
        own = at_interval[trial]
        no_better = sum(1 for v in at_interval.values() if (v <= own if maximize else v >= own))
        return no_better <= cut

    raise ValueError(f"unknown policy type {policy.type!r}")


def policy_problems(policy: PolicyConfig, sampling: str) -> List[str]:
    """Every problem of a policy config, one line each, with AML's constraints."""
    key = "search.policy"
    if policy.type not in POLICY_TYPES:
        return [f"{key}.type={policy.type}: unknown policy; use one of {', '.join(POLICY_TYPES)}"]
    problems = []
    if sampling == "bayesian" and policy.type != "none":
        problems.append(
            f"{key}.type={policy.type}: bayesian sampling takes no early-termination policy "
            "(AML does not support it); set search.policy.type=none or use search=bandit"
        )
    if policy.type == "none":
        return problems
    if policy.evaluation_interval < 1:
        problems.append(
            f"{key}.evaluation_interval={policy.evaluation_interval}: must be >= 1 "
            "(1 = every time the primary metric is reported)"
        )
    if policy.delay_evaluation < 0:
        problems.append(f"{key}.delay_evaluation={policy.delay_evaluation}: must be >= 0")
    if policy.type == "bandit":
        if policy.slack_factor is not None and policy.slack_amount is not None:
            problems.append(
                f"{key}.slack_factor={policy.slack_factor}, {key}.slack_amount={policy.slack_amount}: "
                "Bandit takes one of them; set the other to null"
            )
        elif policy.slack_factor is None and policy.slack_amount is None:
            problems.append(
                f"{key}.slack_factor=None: Bandit needs slack_factor (ratio) or slack_amount "
                "(absolute); e.g. search.policy.slack_factor=0.1"
            )
        for name in ("slack_factor", "slack_amount"):
            value = getattr(policy, name)
            if value is not None and value < 0:
                problems.append(f"{key}.{name}={value}: slack cannot be negative; use a value >= 0")
    if policy.type == "truncation" and (
        policy.truncation_percentage is None or not 1 <= policy.truncation_percentage <= 99
    ):
        problems.append(
            f"{key}.truncation_percentage={policy.truncation_percentage}: must be a whole percentage from 1 to 99"
        )
    return problems
