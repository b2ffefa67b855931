"""What a budget buys on AML: a per-SKU x model training throughput table, and the fit of the AML limits to a
time or cost budget (``budget.minutes``, ``budget.usd``).

An AML run cannot be calibrated before it is submitted, so the figures come from a table that says where each
comes from. One is measured: bert-base-cased on one H200 with this project's GPU defaults (bf16, fused AdamW,
length-grouped batches, no compile), 965 samples/s at review lengths (``scripts/bench_train.py``,
docs/performance.md). The others are FLOP estimates from it: training costs 6 x N FLOPs per token (N = the
parameters outside the embeddings), so a card reaches the H200 run's share of its own bf16 peak, and a model
with fewer parameters proportionally more samples. The CPU row scales this project's 2-core VM measurement of
MiniLM the same way. Replace an estimate with a measurement when one exists.

The limits follow from the fit: ``trial_timeout`` is twice a trial's expected time, ``timeout`` the sweep's
waves of trials at that limit, ``max_concurrent_trials`` the cluster's nodes per trial, ``max_total_trials`` as
many as fit; the worst case by :mod:`finetune.launch.azureml.pricing` (every trial to its timeout) is what a
``budget.usd`` bounds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Optional, Tuple

from finetune.errors import UserError
from finetune.launch.azureml import pricing
from finetune.plan import budget, fitting

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

# bf16 dense peak TFLOP/s per GPU (vendor data sheets); the H200 is the measured reference.
PEAK_TFLOPS = {
    "H200": 989.0,
    "Standard_NC40ads_H100_v5": 989.0,
    "Standard_NC24ads_A100_v4": 312.0,
    "Standard_NC96ads_A100_v4": 312.0,
    "Standard_NC4as_T4_v3": 65.0,
}
# Parameters outside the embedding tables (what 6 x N counts), from the models' configs.
NON_EMBEDDING_PARAMS = {
    "bert-base-cased": 85.6e6,
    "roberta-base": 85.6e6,
    "distilbert-base-cased": 42.5e6,
    "minilm-l6": 10.6e6,
}
MEASURED = ("H200", "bert-base-cased", 965.0, "measured: scripts/bench_train.py, one H200, bf16 (docs/performance.md)")
# The 2-core dev VM trained MiniLM at 13.6 samples/s on one thread (a default run's summary.json throughput);
# Standard_DS3_v2 has 4 vCPUs, which train 4 ** THREAD_EXPONENT times as fast.
CPU_MINILM_ONE_THREAD = 13.6
CPU_SKUS = {"Standard_DS3_v2": 4}
# A trial's fixed cost on AML: node allocation from zero, the image pull, the model download (an assumption,
# not a measurement: AML documents no figure; a warm cluster needs far less).
AML_TRIAL_OVERHEAD_S = 360.0
# The pipeline's own wall time beside training: the data upload, and the register and deploy steps (their
# worst case is pricing.STEP_HOURS; these are the expected times, also assumptions).
AML_UPLOAD_S = 120.0
AML_STEP_S = {"test_automl": 300.0, "register": 300.0, "deploy": 900.0}


def samples_per_second(vm_size: Optional[str], model: str) -> Tuple[Optional[float], str]:
    """Training samples/s of one trial of ``model`` on one node of ``vm_size``, and where the figure comes from."""
    card, measured_model, measured, source = MEASURED
    params = NON_EMBEDDING_PARAMS.get(model)
    if params is None:
        return None, f"no throughput figure for model {model}"
    if vm_size in PEAK_TFLOPS:
        rate = measured * PEAK_TFLOPS[vm_size] / PEAK_TFLOPS[card] * NON_EMBEDDING_PARAMS[measured_model] / params
        kind = (
            source
            if (vm_size, model) == (card, measured_model)
            else (f"FLOP estimate from the H200 measurement ({measured:g} samples/s, bert-base-cased)")
        )
        return rate, kind
    if vm_size in CPU_SKUS:
        rate = (
            CPU_MINILM_ONE_THREAD
            * NON_EMBEDDING_PARAMS["minilm-l6"]
            / params
            * CPU_SKUS[vm_size] ** budget.THREAD_EXPONENT
        )
        return rate, "FLOP estimate from MiniLM measured on the 2-core dev VM"
    return None, f"no throughput figure for {vm_size}"


def fit(plan: "RunPlan", train_rows: int, val_rows: int) -> "RunPlan":
    """The AML plan with limits that fit ``budget.minutes`` and ``budget.usd``; one line and exit 2 when none does."""
    rate, source = samples_per_second(plan.compute.vm_size, plan.model.name)
    if rate is None:
        raise UserError(f"budget: {source}; use budget=none and set search.limits.* yourself")
    speed = budget.Throughput(
        train_example_s=1 / rate,
        eval_example_s=1 / (3 * rate),
        trial_overhead_s=AML_TRIAL_OVERHEAD_S,
        basis=f"{plan.compute.vm_size} x {plan.model.name}: {rate:.0f} samples/s, {source}",
    )
    work = budget.Workload(train_rows, val_rows, plan.train.evals_per_epoch)
    sweep = plan.search.sampling != "none"
    lanes = max(1, plan.compute.max_nodes // plan.compute.instance_count) if sweep else 1
    best = None
    for epochs in range(math.ceil(plan.model.epochs), 0, -1):
        epochs = min(float(epochs), plan.model.epochs)
        for trials in range(plan.budget.max_trials if sweep else 1, 0, -1):
            candidate = _candidate(plan, speed, work, epochs, trials, min(lanes, trials))
            if _within(plan, candidate):
                best = best or candidate
                if trials >= budget.MIN_SWEEP_TRIALS or not sweep:
                    return _applied(plan, candidate, sweep)
                break
    if best is not None:
        return _applied(plan, best, sweep)
    smallest = _candidate(plan, speed, work, min(1.0, plan.model.epochs), 1, 1)
    key = "budget.usd" if plan.budget.usd is not None else "budget.minutes"
    value = plan.budget.usd if plan.budget.usd is not None else plan.budget.minutes
    raise UserError(
        f"{key}={value:g}: too small to produce a model on {plan.compute.vm_size}; the smallest budget "
        f"that can is budget.usd={math.ceil(_bound(smallest) * 100) / 100:g} "
        f"(budget.minutes={math.ceil(smallest.estimate.total_s / 60 / (1 - budget.HEADROOM))}), "
        "or budget=none for the configured limits"
    )


def _candidate(plan: "RunPlan", speed, work, epochs: float, trials: int, lanes: int) -> "RunPlan":
    seconds = budget.trial_seconds(speed, work, epochs)
    timeout_s = math.ceil(seconds * budget.TRIAL_TIMEOUT_FACTOR)
    waves = math.ceil(trials / lanes)
    steps = (
        ["register"]
        + (["test_automl"] if plan.automl.engine == "text_classification" else [])
        + (["deploy"] if plan.endpoint.target == "managed" else [])
    )
    automl = plan.automl
    if automl.engine == "text_classification" and plan.budget.minutes is not None:
        # AutoML stops at its timeout; under a time budget it must end before the register step needs it.
        room = plan.budget.minutes * 60 * (1 - budget.HEADROOM) - AML_UPLOAD_S - sum(AML_STEP_S[s] for s in steps)
        automl = dataclasses.replace(automl, timeout_minutes=max(1, min(automl.timeout_minutes, int(room // 60))))
    automl_s = automl.timeout_minutes * 60 if automl.engine == "text_classification" else 0
    stages = {"data": AML_UPLOAD_S, "search" if plan.search.sampling != "none" else "train": waves * seconds}
    if automl_s:
        # AutoML runs beside the sweep: only what it takes past the sweep adds wall time.
        stages["automl (beside the sweep)"] = max(0.0, automl_s - waves * seconds)
    stages.update({step: AML_STEP_S[step] for step in steps})
    estimate = budget.Estimate(
        budget_s=(plan.budget.minutes or 0) * 60,
        trials=trials,
        max_trials=trials,
        epochs=epochs,
        concurrency=lanes,
        threads=0,
        trial_s=round(seconds, 1),
        trial_overhead_s=speed.trial_overhead_s,
        trial_timeout_s=timeout_s,
        sweep_s=waves * timeout_s,
        automl_s=None,
        stages=stages,
        basis=speed.basis,
    )
    return dataclasses.replace(fitting.apply(plan, estimate), automl=automl)


def _bound(plan: "RunPlan") -> float:
    """The worst case by the price table, as the plan prints it."""
    return sum(
        e.cost_usd or 0.0
        for e in (pricing.sweep_estimate(plan), pricing.automl_estimate(plan), pricing.steps_estimate(plan))
        if e is not None
    )


def _within(plan: "RunPlan", candidate: "RunPlan") -> bool:
    estimate = candidate.estimate
    if plan.budget.minutes is not None and estimate.total_s > plan.budget.minutes * 60 * (1 - budget.HEADROOM):
        return False
    return plan.budget.usd is None or _bound(candidate) <= plan.budget.usd


def _applied(plan: "RunPlan", candidate: "RunPlan", sweep: bool) -> "RunPlan":
    estimate = candidate.estimate
    price = plan.compute.hourly_price_usd
    expected_cost = None
    if price is not None:
        automl = pricing.automl_estimate(candidate)
        steps = pricing.steps_estimate(candidate)
        expected_cost = (
            estimate.trials * estimate.trial_s / 3600 * plan.compute.instance_count * price
            + (automl.cost_usd or 0.0 if automl else 0.0)
            + (steps.cost_usd or 0.0)
        )
    reason = budget.reason_line(
        estimate,
        sweep,
        fitting.policy_text(plan),
        plan.model.epochs,
        fewer=sweep and estimate.trials < budget.MIN_SWEEP_TRIALS,
    )
    if plan.budget.usd is not None:
        reason += f"; worst case ${_bound(candidate):,.2f} of ${plan.budget.usd:g} by the price table"
    estimate = dataclasses.replace(estimate, reason=reason, cost_usd=expected_cost)
    return dataclasses.replace(candidate, estimate=estimate)
