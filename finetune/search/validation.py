"""The sweep's plan check (one entry of ``finetune.plan.CHECKS``): space, policy, objective and limits.

Runs on every plan, so it imports only the standard library and the config modules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List

from finetune.metrics import METRIC_NAMES
from finetune.search.policies import GOALS, policy_problems
from finetune.model_files import model_config_names
from finetune.search.space import space_problems

if TYPE_CHECKING:
    from finetune.plan import RunPlan

SAMPLINGS = ("none", "random", "grid", "bayesian")
# What training logs at every evaluation (docs/contracts.md): a sweep can only optimise one of these.
PRIMARY_METRICS = ("val_loss",) + tuple(f"val_{name}" for name in METRIC_NAMES)


def check_search(plan: "RunPlan") -> List[str]:
    search = plan.search
    if search.sampling not in SAMPLINGS:
        return [f"search.sampling={search.sampling}: unknown; use one of {', '.join(SAMPLINGS)}"]
    if search.sampling == "none":
        problems = []
        if search.space:
            problems.append(f"search.space={sorted(search.space)}: search.sampling=none runs no sweep; "
                            "use search=bandit (or random, grid, bayesian) to search these")
        if search.policy.type != "none":
            problems.append(f"search.policy.type={search.policy.type}: search.sampling=none runs no sweep; "
                            "use search=bandit")
        return problems

    problems = []
    if not search.space:
        problems.append("search.space={}: a sweep needs at least one dimension; "
                        "e.g. search.space.learning_rate='tag(log,interval(1e-5,1e-4))'")
    problems += space_problems(search.space, search.sampling, model_config_names())
    problems += policy_problems(search.policy, search.sampling)
    if search.primary_metric not in PRIMARY_METRICS:
        problems.append(f"search.primary_metric={search.primary_metric}: training does not log it; "
                        f"use one of {', '.join(PRIMARY_METRICS)}")
    if search.goal not in GOALS:
        problems.append(f"search.goal={search.goal}: use maximize or minimize")
    limits = search.limits
    for name in ("max_total_trials", "max_concurrent_trials", "timeout", "trial_timeout"):
        value = getattr(limits, name)
        if value is not None and value < 1:
            unit = " (seconds)" if "timeout" in name else ""
            problems.append(f"search.limits.{name}={value}: must be >= 1{unit}"
                            + ("; or null for none" if "timeout" in name else ""))
    if limits.max_concurrent_trials > limits.max_total_trials >= 1:
        problems.append(f"search.limits.max_concurrent_trials={limits.max_concurrent_trials}: more than "
                        f"max_total_trials={limits.max_total_trials}; set it <= {limits.max_total_trials}")
    return problems
