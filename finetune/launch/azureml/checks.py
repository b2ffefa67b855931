"""AML-specific plan checks: what azure-ai-ml accepts without a word and Azure ML rejects later.

The SDK builds jobs, endpoints and clusters from nonsense (an endpoint name it cannot send, an
AutoML metric it answers with a bare KeyError, a cluster smaller than one job, a missing workspace) and
the service refuses them at submit time or, worse, minutes into a run. These rules run with every other
plan check (``finetune.plan.run_plan.CHECKS``), on AML plans only, so every problem is reported at once as one line.
Sweep rules that hold for the local sampler too (ranges, empty choices, grid over continuous
dimensions, bayesian with a policy, slack, truncation, limits) live in :mod:`finetune.search` and are not
repeated here.

AutoML NLP's own rules are in :mod:`finetune.launch.azureml.automl_checks`.

Standard library only: this runs while any plan is validated.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, List

from finetune.errors import ConfigProblems, UserError
from finetune.launch.azureml.automl_checks import automl_metric_problems, automl_problems
from finetune.launch.azureml.command import model_hub_id
from finetune.launch.azureml.workspace import resolve
from finetune.search.validation import objective_problems
from finetune.serve.endpoint_names import ENDPOINT_NAME, ENDPOINT_NAME_LENGTH, endpoint_name
from finetune.serve.rollout import RolloutError, check_ramp

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

# AmlCompute cluster names: 2-16 characters, a letter first, letters/digits/'-'.
CLUSTER_NAME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9]{1,15}$")
# AML's Bayesian sampler takes these distributions only (the local TPE sampler takes every one).
BAYESIAN_DISTRIBUTIONS = ("choice", "uniform", "quniform")
AUTH_MODES = ("key", "aml_token")
# CUDA builds of torch the AML environments install -> the GPU compute capabilities they run on. PyTorch's
# cu126/cu128 wheels are built for sm_50..sm_90 (cu128 adds Blackwell, sm_100/sm_120); CUDA 13 (the PyPI
# default wheel) dropped sm_50..sm_70, which is why AML jobs never take the PyPI wheel
# (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/ "CUDA 13.0: Maxwell, Pascal and Volta removed").
CUDA_BUILDS = {"12.6": ((5, 0), (9, 0)), "12.8": ((7, 5), (12, 0))}
# Managed online deployments cap the scoring timeout at 3 minutes.
MAX_REQUEST_TIMEOUT_MS = 180_000


# A trial (or the single run) without a time limit could hold a GPU node for ever; on AML it gets this one.
DEFAULT_TRIAL_TIMEOUT_S = 2 * 3600


def resolve_limits(plan: "RunPlan") -> "RunPlan":
    """The plan with AML's time limits filled in where the config leaves them open (printed with the plan):
    ``trial_timeout`` 2 h, and the sweep's ``timeout`` the time its trials need at that limit in
    ``max_concurrent_trials`` lanes; the deployment's instance type and request timeout sized for the model
    (:func:`finetune.launch.azureml.deploy.sized`)."""
    import dataclasses
    import math

    limits = plan.search.limits
    trial_timeout = limits.trial_timeout or DEFAULT_TRIAL_TIMEOUT_S
    trials = 1 if plan.search.sampling == "none" else limits.max_total_trials
    timeout = limits.timeout or math.ceil(trials / max(1, limits.max_concurrent_trials)) * trial_timeout
    limits = dataclasses.replace(limits, trial_timeout=trial_timeout, timeout=timeout)
    endpoint = plan.endpoint
    if endpoint.target == "managed":
        from finetune.launch.azureml.deploy import sized

        endpoint = sized(endpoint, plan.model.name)
    return dataclasses.replace(plan, search=dataclasses.replace(plan.search, limits=limits), endpoint=endpoint)


def distinct_targets(plans: list) -> list:
    """AML plans of one multirun that would share a registered model or an endpoint get their own.

    Two plans registering the same model name race for its next version, and their rollouts delete each
    other's deployments; so each plan gets ``<name>-<what differs>`` (its own override values; an endpoint name
    past AML's 32 characters is cut and hashed by :func:`finetune.serve.endpoint_names.endpoint_name`) and keeps its
    own production line.
    """
    import dataclasses

    aml = [plan for plan in plans if plan.launcher == "azureml"]
    shared_models = len({p.select.registered_model_name for p in aml}) < len(aml)
    shared_endpoints = len({p.endpoint.name for p in aml if p.endpoint.target == "managed"}) < len(
        [p for p in aml if p.endpoint.target == "managed"]
    )
    if not (shared_models or shared_endpoints):
        return plans
    common = set.intersection(*(set(p.overrides) for p in aml))
    result = []
    for plan in plans:
        if plan.launcher != "azureml":
            result.append(plan)
            continue
        own = [o.split("=", 1)[-1] for o in plan.overrides if o not in common and not o.startswith("output_root=")]
        slug = re.sub(r"[^a-z0-9]+", "-", "-".join(own).lower()).strip("-") or plan.name.rsplit("-", 1)[-1]
        model_name = f"{plan.select.registered_model_name}-{slug}"[:255]
        result.append(
            dataclasses.replace(
                plan,
                select=dataclasses.replace(plan.select, registered_model_name=model_name),
                endpoint=dataclasses.replace(plan.endpoint, name=endpoint_name(f"{plan.endpoint.name}-{slug}")),
            )
        )
    names = [(p.select.registered_model_name, p.endpoint.name) for p in result if p.launcher == "azureml"]
    if len(set(names)) < len(names):
        raise UserError(
            "the AML plans of this multirun would share a registered model name or endpoint; set "
            "select.registered_model_name and endpoint.name per plan"
        )
    return result


def check_azureml(plan: "RunPlan") -> List[str]:
    """Every AML-specific problem of ``plan`` (none for the local launcher)."""
    if plan.launcher != "azureml":
        return []
    return (
        compute_problems(plan)
        + search_problems(plan)
        + automl_problems(plan)
        + endpoint_problems(plan)
        + workspace_problems(plan)
    )


def compute_problems(plan: "RunPlan") -> List[str]:
    compute, problems = plan.compute, []
    key = "compute"
    if not compute.cluster_name:
        problems.append(f"{key}.cluster_name=None: name the AML cluster, e.g. compute.cluster_name=gpu-a100")
    elif not CLUSTER_NAME.match(compute.cluster_name):
        problems.append(
            f"{key}.cluster_name={compute.cluster_name}: AML cluster names are 2-16 letters, digits "
            "or '-', starting with a letter"
        )
    if not compute.vm_size:
        problems.append(f"{key}.vm_size=None: set the VM size, e.g. compute.vm_size=Standard_NC24ads_A100_v4")
    if compute.min_nodes < 0:
        problems.append(f"{key}.min_nodes={compute.min_nodes}: must be >= 0 (0 lets the cluster scale to nothing)")
    if compute.max_nodes < 1:
        problems.append(f"{key}.max_nodes={compute.max_nodes}: must be >= 1")
    elif compute.min_nodes > compute.max_nodes:
        problems.append(f"{key}.min_nodes={compute.min_nodes}: more than max_nodes={compute.max_nodes}")
    if compute.instance_count < 1:
        problems.append(f"{key}.instance_count={compute.instance_count}: a job needs at least one node")
    elif compute.instance_count > compute.max_nodes >= 1:
        problems.append(
            f"{key}.instance_count={compute.instance_count}: a job on more nodes than the cluster's "
            f"max_nodes={compute.max_nodes} never starts; raise compute.max_nodes"
        )
    if compute.gpus_per_node < 0:
        problems.append(f"{key}.gpus_per_node={compute.gpus_per_node}: must be >= 0")
    if compute.processes_per_node < 1:
        problems.append(f"{key}.processes_per_node={compute.processes_per_node}: must be >= 1")
    elif compute.gpus_per_node > 0 and compute.processes_per_node > compute.gpus_per_node:
        problems.append(
            f"{key}.processes_per_node={compute.processes_per_node}: more training processes than "
            f"GPUs (gpus_per_node={compute.gpus_per_node}); use one process per GPU"
        )
    if compute.device == "cuda" and compute.gpus_per_node == 0:
        problems.append(
            f"{key}.device=cuda: {compute.vm_size} has gpus_per_node=0; use a GPU compute "
            "(compute=t4, a100, a100x4, h100) or compute.device=cpu"
        )
    if compute.idle_seconds_before_scaledown < 0:
        problems.append(f"{key}.idle_seconds_before_scaledown={compute.idle_seconds_before_scaledown}: must be >= 0")
    if compute.hourly_price_usd is not None and compute.hourly_price_usd < 0:
        problems.append(f"{key}.hourly_price_usd={compute.hourly_price_usd}: must be >= 0 (or null: unknown)")
    if compute.steps_cluster_name is not None:
        if not CLUSTER_NAME.match(compute.steps_cluster_name):
            problems.append(
                f"{key}.steps_cluster_name={compute.steps_cluster_name}: AML cluster names are 2-16 "
                "letters, digits or '-', starting with a letter"
            )
        if not compute.steps_vm_size:
            problems.append(f"{key}.steps_vm_size=None: set the steps cluster's VM size, e.g. Standard_DS3_v2")
    return problems + gpu_stack_problems(plan)


def _version(text: str) -> tuple:
    return tuple(int(part) for part in str(text).split("."))


def gpu_stack_problems(plan: "RunPlan") -> List[str]:
    """The torch CUDA build of the training environment must run on the cluster's GPU."""
    compute, key = plan.compute, "compute"
    if compute.device != "cuda" or compute.gpus_per_node < 1:
        return []  # a CPU cluster asked for CUDA is reported once, by compute_problems
    if compute.cuda not in CUDA_BUILDS:
        return [
            f"{key}.cuda={compute.cuda}: the CUDA build of torch for AML GPU jobs; use one of "
            f"{', '.join(CUDA_BUILDS)} (PyTorch wheel index builds this launcher installs)"
        ]
    if not compute.gpu_arch:
        return [
            f"{key}.gpu_arch=None: set the GPU's compute capability of {compute.vm_size} (e.g. 8.0 for A100), "
            "so the CUDA build can be checked against it"
        ]
    try:
        arch = _version(compute.gpu_arch)
    except ValueError:
        return [f"{key}.gpu_arch={compute.gpu_arch}: a compute capability such as 7.5, 8.0 or 9.0"]
    low, high = CUDA_BUILDS[compute.cuda]
    if not low <= arch <= high:
        return [
            f"{key}.cuda={compute.cuda}: torch's CUDA {compute.cuda} wheels run on compute capability "
            f"{'.'.join(map(str, low))}-{'.'.join(map(str, high))}, and {compute.vm_size} has "
            f"{compute.gpu_arch}; pick another compute.cuda or compute"
        ]
    return []


def search_problems(plan: "RunPlan") -> List[str]:
    search, problems = plan.search, []
    if search.policy.type == "truncation" and search.policy.exclude_finished_jobs:
        problems.append(
            "search.policy.exclude_finished_jobs=true: AML v2's TruncationSelectionPolicy has no such "
            "option (it always compares every run); set it to false"
        )
    if search.sampling == "bayesian":
        for name, dist in search.space.items():
            kind = dist.get("type") if isinstance(dist, dict) else None
            if kind not in BAYESIAN_DISTRIBUTIONS:
                problems.append(
                    f"search.space.{name}.type={kind}: AML's bayesian sampling takes only "
                    f"{', '.join(BAYESIAN_DISTRIBUTIONS)}; use one of them or search.sampling=random"
                )
    model = search.space.get("model")
    if isinstance(model, dict) and model.get("type") == "choice":
        local = [name for name in model.get("values", []) if model_hub_id(str(name)) is None]
        if local:
            problems.append(
                f"search.space.model.values={list(model['values'])}: {', '.join(map(str, local))} "
                "has no hub_id, and AML trials can only fetch hub models by name"
            )
    return problems


def with_task(plan: "RunPlan", task: str) -> "RunPlan":
    """``plan`` for data of ``task`` (the prepared data's; ``dataset.task=auto`` leaves it to the data), checked
    again for the rules that depend on it: AutoML's primary metric and the sweep's objective."""
    import dataclasses

    plan = dataclasses.replace(plan, dataset=dataclasses.replace(plan.dataset, task=task))
    problems = objective_problems(plan)
    if plan.automl.engine == "text_classification":
        problems += automl_metric_problems(plan.automl, task)
    if problems:
        raise ConfigProblems(problems)
    return plan


def endpoint_problems(plan: "RunPlan") -> List[str]:
    endpoint, problems = plan.endpoint, []
    if endpoint.target == "none":
        return []
    if endpoint.target != "managed":
        return [f"endpoint.target={endpoint.target}: on AML compute use endpoint=managed or endpoint=none"]
    problems += name_problems("endpoint.name", endpoint.name)
    if endpoint.auth_mode not in AUTH_MODES:
        problems.append(f"endpoint.auth_mode={endpoint.auth_mode}: a managed endpoint takes {' or '.join(AUTH_MODES)}")
    if not endpoint.instance_type:
        problems.append("endpoint.instance_type=None: set a VM size, e.g. Standard_DS3_v2")
    if endpoint.instance_count < 1:
        problems.append(f"endpoint.instance_count={endpoint.instance_count}: a deployment needs at least one instance")
    if not 0 <= endpoint.request_timeout_ms <= MAX_REQUEST_TIMEOUT_MS:
        problems.append(
            f"endpoint.request_timeout_ms={endpoint.request_timeout_ms}: must be 1..{MAX_REQUEST_TIMEOUT_MS} "
            "(or 0: sized from the model and max_batch_items)"
        )
    if endpoint.max_concurrent_requests_per_instance < 1:
        problems.append(
            f"endpoint.max_concurrent_requests_per_instance={endpoint.max_concurrent_requests_per_instance}: "
            "must be >= 1"
        )
    for name in ("liveness_initial_delay_s", "readiness_initial_delay_s"):
        if getattr(endpoint, name) < 0:
            problems.append(f"endpoint.{name}={getattr(endpoint, name)}: must be >= 0")
    for name in ("probe_period_s", "probe_failure_threshold"):
        if getattr(endpoint, name) < 1:
            problems.append(f"endpoint.{name}={getattr(endpoint, name)}: must be >= 1")
    if not 0 <= endpoint.max_error_rate <= 1:
        problems.append(f"endpoint.max_error_rate={endpoint.max_error_rate}: a fraction in [0, 1]")

    try:
        # Each step gives the new deployment p% and the old ones 100-p%: traffic sums to 100 when the
        # ramp's steps are percentages ending at 100.
        check_ramp(endpoint.ramp)
    except (RolloutError, TypeError, ValueError) as error:
        problems.append(f"endpoint.ramp={list(endpoint.ramp)}: {error}")
    return problems


def name_problems(key: str, name: str) -> List[str]:
    """Problems of an online endpoint or deployment name."""
    low, high = ENDPOINT_NAME_LENGTH
    if not name or not low <= len(name) <= high:
        return [f"{key}={name}: must be {low}-{high} characters"]
    if not ENDPOINT_NAME.match(name):
        return [f"{key}={name}: must start with a letter and hold only letters, digits and '-' (not last)"]
    if name != name.lower():
        return [f"{key}={name}: AML lower-cases endpoint names; write it as {name.lower()}"]
    return []


def workspace_problems(plan: "RunPlan") -> List[str]:
    """A submission needs all three workspace fields; a dry run needs none."""
    if plan.dry_run:
        return []

    return resolve(plan.workspace).problems
