"""A run plan under a budget: the budget's plan checks, what the fit reads from a plan, the plan with the fit's
choices in place, and the local fit from this machine's calibration (the arithmetic itself is
:mod:`finetune.plan.budget`)."""

from __future__ import annotations

import dataclasses
import math
from typing import List

from finetune.errors import UserError
from finetune.plan import budget, calibration
from finetune.plan.run_plan import RunPlan
from finetune.system import cpu


def budgeted(plan: RunPlan) -> bool:
    return plan.budget.minutes is not None or plan.budget.usd is not None


def check_budget(plan: RunPlan) -> List[str]:
    """The budget's problems a plan shows before anything is measured (a too small budget needs the
    calibration's figures and is refused when the launcher fits it, naming the smallest that works)."""
    usd, problems = plan.budget.usd, []
    if usd is not None and plan.launcher == "local":
        problems.append(
            f"budget.usd={usd:g}: a local run has no price; set budget.minutes instead (or compute=a100 etc. for AML)"
        )
    elif usd is not None and plan.compute.hourly_price_usd is None:
        problems.append(
            f"budget.usd={usd:g}: compute {plan.compute.name} has no price; set "
            "compute.hourly_price_usd (USD per node-hour) or use budget.minutes"
        )
    return problems


def policy_text(plan: RunPlan) -> str:
    """``Bandit from epoch 1``: when the sweep's policy first stops a trial (empty without a policy)."""
    policy = plan.search.policy
    if plan.search.sampling == "none" or policy.type == "none":
        return ""
    first = max(policy.delay_evaluation + 1, policy.evaluation_interval)
    per_epoch = plan.train.evals_per_epoch
    when = f"epoch {first // per_epoch}" if first % per_epoch == 0 else f"evaluation {first}"
    return f"{policy.type.capitalize()} from {when}"


def pinned(plan: RunPlan) -> set:
    """The keys the command line sets: a budget fits around them instead of replacing them."""
    return {override.lstrip("+~").split("=", 1)[0] for override in plan.overrides}


def request_for(
    plan: RunPlan,
    speed: budget.Throughput,
    work: budget.Workload,
    lanes: int,
    stages: budget.StageCosts,
    budget_s: float,
) -> budget.Request:
    keys, limits = pinned(plan), plan.search.limits
    trials = (
        min(plan.budget.max_trials, limits.max_total_trials)
        if "search.limits.max_total_trials" in keys
        else plan.budget.max_trials
    )
    return budget.Request(
        budget_s=budget_s,
        speed=speed,
        work=work,
        stages=stages,
        max_epochs=plan.model.epochs,
        max_trials=trials,
        lanes=lanes,
        sweep=plan.search.sampling != "none",
        automl_s=plan.automl.time_budget_s if "automl" in plan.stages else None,
        deploy="deploy" in plan.stages,
        policy=policy_text(plan),
        fixed_epochs="model.epochs" in keys,
        fixed_lanes=limits.max_concurrent_trials if "search.limits.max_concurrent_trials" in keys else None,
        fixed_automl="automl.time_budget_s" in keys,
    )


def apply(plan: RunPlan, estimate: budget.Estimate) -> RunPlan:
    """The plan with the fit's choices in place of the configured epochs, limits and AutoML budget."""
    keys = pinned(plan)
    fitted = {
        "max_total_trials": estimate.max_trials,
        "max_concurrent_trials": estimate.concurrency,
        "trial_timeout": estimate.trial_timeout_s,
        "timeout": max(1, math.floor(estimate.sweep_s)),
    }
    limits = dataclasses.replace(
        plan.search.limits, **{key: value for key, value in fitted.items() if f"search.limits.{key}" not in keys}
    )
    automl = (
        dataclasses.replace(plan.automl, time_budget_s=estimate.automl_s)
        if estimate.automl_s is not None and plan.automl.engine == "local" and "automl.time_budget_s" not in keys
        else plan.automl
    )
    search = dataclasses.replace(plan.search, limits=limits)
    stages = plan.stages
    if not estimate.sweep and search.sampling != "none":
        search = dataclasses.replace(search, sampling="none")
        stages = ["train" if name == "search" else name for name in stages]
    return dataclasses.replace(
        plan,
        model=dataclasses.replace(plan.model, epochs=estimate.epochs),
        search=search,
        stages=stages,
        automl=automl,
        estimate=estimate,
    )


def refusal(plan: RunPlan, error: budget.BudgetTooSmall) -> str:
    """The one line that refuses a budget too small for a model, naming the smallest that works."""
    wanted = plan.budget
    key, value = ("budget.usd", wanted.usd) if wanted.minutes is None else ("budget.minutes", wanted.minutes)
    minimum = math.ceil(error.minimum_s / 60 * 10) / 10
    return (
        f"{key}={value:g}: too small to produce a model ({error.detail}); the smallest budget that can is "
        f"budget.minutes={minimum:g} on this machine, or budget=none for the configured limits"
    )


def fit_to_this_machine(plan: RunPlan) -> RunPlan:
    """A budget is fitted from this machine's calibration (measured once per machine, model and data, cached)."""
    if not budgeted(plan):
        return plan
    try:
        busy_now = cpu.busy_cores_now()
        measured, calibration_s = calibration.calibrate(plan, busy_now)
    except UserError as error:
        # Data or a model the calibration cannot read is the run's own error, which its data or training stage
        # reports in its own words; the plan stands with the configured limits.
        print(f"{error}; the plan keeps the configured limits", flush=True)
        return plan
    device_lanes = measured.get("gpus") if measured["device"] == "cuda" else None
    lanes = device_lanes or plan.compute.num_threads or cpu.cores()
    speed = calibration.throughput(measured, busy_now, lanes)
    request = request_for(
        plan,
        speed,
        calibration.workload(measured, plan.train.evals_per_epoch),
        lanes,
        calibration.stage_costs(measured, calibration_s, speed.at_threads(lanes)),
        (plan.budget.minutes or 0) * 60,
    )
    try:
        estimate = budget.fit(request)
    except budget.BudgetTooSmall as error:
        if {"budget.minutes", "budget.usd"} & pinned(plan):
            raise UserError(refusal(plan, error)) from None
        # The shipped default is no request of the user's: a slower machine gets the smallest plan that
        # produces a model, said in the plan's line, rather than a refusal of `python -m finetune`.
        estimate = budget.fit(dataclasses.replace(request, budget_s=error.minimum_s * 1.001))
        estimate.reason += (
            f"; the default budget.minutes={plan.budget.minutes:g} is too small on this machine "
            f"(the smallest that fits is {error.minimum_s / 60:.1f})"
        )
    estimate.calibration_s = round(calibration_s, 1)
    fitted = apply(plan, estimate)
    if measured["device"] == "cpu" and "compute.num_threads" not in pinned(plan):
        # The threads the fit counted on: training would otherwise size itself by the load average, which the
        # calibration just raised.
        fitted = dataclasses.replace(
            fitted, compute=dataclasses.replace(fitted.compute, num_threads=estimate.threads * estimate.concurrency)
        )
    return fitted
