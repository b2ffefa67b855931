"""What a plan may cost on AML: an upper bound of the sweep's (and AutoML's) GPU-hours and dollars.

Prices come from the compute config (``compute.hourly_price_usd``, the VM's pay-as-you-go list price;
see conf/compute/*.yaml), never from a network lookup: a dry run must work offline. The bound is what
the limits allow, not a forecast: every trial running to its timeout on every node of its job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

# A trial with no trial_timeout has no upper bound at all; the estimate then assumes this many hours per
# trial (a base-size transformer's few epochs over a few thousand reviews take well under that on one
# GPU) and says so. AML plans always get a trial_timeout (finetune.launch.azureml.checks.resolve_limits).
ASSUMED_TRIAL_HOURS = 2.0
# The test/register/deploy steps: node start, image pull, scoring the test split, and for deploy the
# managed deployment's creation and smoke test, which the deploy step waits for.
STEP_HOURS = {"test_automl": 0.5, "register": 0.5, "deploy": 1.0}


@dataclass
class Estimate:
    what: str
    runs: int
    hours_per_run: float
    basis: str  # where hours_per_run comes from
    nodes: int
    node_hours: float
    gpu_hours: float
    price: Optional[float]

    @property
    def cost_usd(self) -> Optional[float]:
        return None if self.price is None else self.node_hours * self.price

    def line(self, vm_size: str) -> str:
        cost = (
            f" x ${self.price:.2f}/h ({vm_size}) = ${self.cost_usd:,.2f}"
            if self.price is not None
            else f"; no price for {vm_size} (set compute.hourly_price_usd)"
        )
        return (
            f"{self.what}: {self.runs} x {self.hours_per_run:g} h ({self.basis}) x {self.nodes} node(s) "
            f"= {self.node_hours:g} node-hours = {self.gpu_hours:g} GPU-hours{cost}"
        )


def sweep_estimate(plan: "RunPlan") -> Estimate:
    """The training stage: every trial of the sweep (one run for search=none) to its time limit."""
    limits, compute = plan.search.limits, plan.compute
    runs = 1 if plan.search.sampling == "none" else limits.max_total_trials
    if limits.trial_timeout:
        hours, basis = limits.trial_timeout / 3600, "search.limits.trial_timeout"
    else:
        hours, basis = ASSUMED_TRIAL_HOURS, "assumed: search.limits.trial_timeout unset"
    node_hours = runs * hours * compute.instance_count
    if limits.timeout and plan.search.sampling != "none":
        # The whole sweep stops at `timeout`, with at most max_concurrent_trials jobs running meanwhile.
        ceiling = limits.timeout / 3600 * min(limits.max_concurrent_trials, runs) * compute.instance_count
        if ceiling < node_hours:
            node_hours, basis = ceiling, basis + "; capped by search.limits.timeout"
    return Estimate(
        "sweep" if plan.search.sampling != "none" else "training",
        runs,
        round(hours, 4),
        basis,
        compute.instance_count,
        round(node_hours, 4),
        round(node_hours * compute.gpus_per_node, 4),
        compute.hourly_price_usd,
    )


def automl_estimate(plan: "RunPlan") -> Optional[Estimate]:
    """AutoML NLP: its timeout on all of its nodes (None without an AutoML stage)."""
    automl, compute = plan.automl, plan.compute
    if automl.engine != "text_classification":
        return None
    node_hours = automl.timeout_minutes / 60 * automl.max_nodes
    return Estimate(
        "automl",
        1,
        round(automl.timeout_minutes / 60, 4),
        "automl.timeout_minutes",
        automl.max_nodes,
        round(node_hours, 4),
        round(node_hours * compute.gpus_per_node, 4),
        compute.hourly_price_usd,
    )


def steps_estimate(plan: "RunPlan") -> Estimate:
    """The pipeline's own steps, on the steps cluster (or the training cluster when there is none)."""
    compute = plan.compute
    steps = (
        ["register"]
        + (["test_automl"] if plan.automl.engine == "text_classification" else [])
        + (["deploy"] if plan.endpoint.target == "managed" else [])
    )
    hours = sum(STEP_HOURS[step] for step in steps)
    on_steps_cluster = bool(compute.steps_cluster_name)
    price = compute.steps_hourly_price_usd if on_steps_cluster else compute.hourly_price_usd
    gpus = 0 if on_steps_cluster else compute.gpus_per_node
    where = compute.steps_vm_size if on_steps_cluster else compute.vm_size
    return Estimate(
        f"steps ({', '.join(steps)} on {where})",
        len(steps),
        round(hours / len(steps), 4),
        "assumed per step",
        1,
        round(hours, 4),
        round(hours * gpus, 4),
        price,
    )


def summary(plan: "RunPlan") -> str:
    """The estimate as printed with the plan."""
    lines: List[str] = ["estimate (upper bound of the limits, dedicated-VM list prices):"]
    estimates = [e for e in (sweep_estimate(plan), automl_estimate(plan), steps_estimate(plan)) if e is not None]
    lines += [
        f"  {e.line(plan.compute.steps_vm_size if e.what.startswith('steps') and plan.compute.steps_cluster_name else plan.compute.vm_size)}"
        for e in estimates
    ]
    if all(e.cost_usd is not None for e in estimates):
        lines.append(
            f"  total: {sum(e.gpu_hours for e in estimates):g} GPU-hours, ${sum(e.cost_usd for e in estimates):,.2f}"
        )
    return "\n".join(lines)
