"""The sweep's plan check (one entry of ``finetune.plan.run_plan.CHECKS``): space, policy, objective and limits.

Runs on every plan, so it imports only the standard library and the config modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple

from finetune.config.model_files import model_config_names
from finetune.config.schema import GOALS, SAMPLINGS
from finetune.search.policies import policy_problems
from finetune.search.space import space_problems
from finetune.selection.metrics import LOWER_IS_BETTER, metric_names, unprefixed

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan


def primary_metrics(task: str) -> Tuple[str, ...]:
    """What training logs at every evaluation for ``task`` (docs/contracts.md): a sweep can only optimise one of
    these. ``auto`` (the data decides the task later) gets the multi-label list, the larger one; the launchers
    check again once the data is prepared (:func:`objective_problems` with the data's task)."""
    names = metric_names(task if task in ("single_label", "ner") else "multi_label")
    return ("val_loss",) + tuple(f"val_{name}" for name in names)


def objective_problems(plan: "RunPlan") -> List[str]:
    """``search.primary_metric`` for the plan's task: a sweep optimises it, a single run keeps its best evaluation
    by it. The micro averages and the Hamming loss exist for multi-label data only."""
    search, task = plan.search, plan.dataset.task
    metric, legal = search.primary_metric, primary_metrics(task)
    if metric in legal:
        if unprefixed(metric) in LOWER_IS_BETTER and search.goal == "maximize":
            return [f"search.primary_metric={metric}: lower is better; set search.goal=minimize"]
        return []
    if metric in primary_metrics("multi_label"):
        return [
            f"search.primary_metric={metric}: training logs it for multi-label data only, and this data is "
            f"single-label; use one of {', '.join(legal)}"
        ]
    return [f"search.primary_metric={metric}: training does not log it; use one of {', '.join(legal)}"]


def check_search(plan: "RunPlan") -> List[str]:
    search = plan.search
    if search.sampling not in SAMPLINGS:
        return [f"search.sampling={search.sampling}: unknown; use one of {', '.join(SAMPLINGS)}"]
    if search.sampling == "none":
        problems = []
        if search.space:
            problems.append(
                f"search.space={sorted(search.space)}: search.sampling=none runs no sweep; "
                "use search=bandit (or random, grid, bayesian) to search these"
            )
        if search.policy.type != "none":
            problems.append(
                f"search.policy.type={search.policy.type}: search.sampling=none runs no sweep; use search=bandit"
            )
        return problems

    problems = []
    if not search.space:
        problems.append(
            "search.space={}: a sweep needs at least one dimension; "
            "e.g. search.space.learning_rate='tag(log,interval(1e-5,1e-4))'"
        )
    problems += space_problems(search.space, search.sampling, model_config_names())
    problems += policy_problems(search.policy, search.sampling)
    problems += objective_problems(plan)
    if search.goal not in GOALS:
        problems.append(f"search.goal={search.goal}: use maximize or minimize")
    limits = search.limits
    for name in ("max_total_trials", "max_concurrent_trials", "timeout", "trial_timeout"):
        value = getattr(limits, name)
        if value is not None and value < 1:
            unit = " (seconds)" if "timeout" in name else ""
            problems.append(
                f"search.limits.{name}={value}: must be >= 1{unit}"
                + ("; or null for none" if "timeout" in name else "")
            )
    if limits.max_concurrent_trials > limits.max_total_trials >= 1:
        problems.append(
            f"search.limits.max_concurrent_trials={limits.max_concurrent_trials}: more than "
            f"max_total_trials={limits.max_total_trials}; set it <= {limits.max_total_trials}"
        )
    return problems
