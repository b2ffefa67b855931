"""The sweep: the training command with its hyperparameter inputs replaced by AML search dimensions.

Mapping from the project's search config (docs/contracts.md, AML's own vocabulary) to azure-ai-ml:

- distributions 1:1; only the log family changes units: the config holds real bounds
  (``loguniform min: 1e-5``) and AML's LogUniform/QLogUniform take natural-log bounds (``ln(1e-5)``).
  Normal-family ``mu``/``sigma`` already mean the same thing on both sides (LogNormal's are those of
  the underlying normal), so they pass unchanged.
- ``model``: a choice of model config names becomes a choice of their hub ids (what AML nodes download).
- sampling random (seeded), grid, bayesian; the policy with the same parameters that the local pruner
  reads (:mod:`finetune.search.policies`); objective = the ``val_*`` metric training logs; limits as set.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Mapping

from finetune.launch.azureml.command import model_hub_id

if TYPE_CHECKING:
    from finetune.config.schema import PolicyConfig
    from finetune.plan.run_plan import RunPlan


def distribution(dist: Mapping[str, Any]):
    """The azure-ai-ml distribution of one search-space dict."""
    from azure.ai.ml import sweep

    kind = dist["type"]
    if kind == "choice":
        return sweep.Choice(values=list(dist["values"]))
    if kind == "randint":
        return sweep.Randint(upper=int(dist["upper"]))
    if kind == "uniform":
        return sweep.Uniform(min_value=dist["min"], max_value=dist["max"])
    if kind == "quniform":
        return sweep.QUniform(min_value=dist["min"], max_value=dist["max"], q=dist["q"])
    if kind == "loguniform":
        return sweep.LogUniform(min_value=math.log(dist["min"]), max_value=math.log(dist["max"]))
    if kind == "qloguniform":
        return sweep.QLogUniform(min_value=math.log(dist["min"]), max_value=math.log(dist["max"]), q=dist["q"])
    if kind == "normal":
        return sweep.Normal(mu=dist["mu"], sigma=dist["sigma"])
    if kind == "qnormal":
        return sweep.QNormal(mu=dist["mu"], sigma=dist["sigma"], q=dist["q"])
    if kind == "lognormal":
        return sweep.LogNormal(mu=dist["mu"], sigma=dist["sigma"])
    if kind == "qlognormal":
        return sweep.QLogNormal(mu=dist["mu"], sigma=dist["sigma"], q=dist["q"])
    raise ValueError(f"unknown distribution type {kind!r}")


def as_yaml(entity) -> dict:
    """A distribution entity in CLI v2 YAML form (``{type: loguniform, min_value: ..., max_value: ...}``)."""
    return {key: value for key, value in vars(entity).items() if not key.startswith("_") and value is not None}


def search_space(space: Mapping[str, Any]) -> Dict[str, Any]:
    """Input name -> AML distribution, for every dimension of ``search.space``."""
    result = {}
    for name, dist in space.items():
        if name == "model":
            dist = {"type": "choice", "values": [model_hub_id(str(value)) for value in dist["values"]]}
        result[name] = distribution(dist)
    return result


def sampling_algorithm(sampling: str, seed: int):
    from azure.ai.ml.sweep import BayesianSamplingAlgorithm, GridSamplingAlgorithm, RandomSamplingAlgorithm

    if sampling == "random":
        return RandomSamplingAlgorithm(seed=seed)
    if sampling == "grid":
        return GridSamplingAlgorithm()
    if sampling == "bayesian":
        return BayesianSamplingAlgorithm()
    raise ValueError(f"search.sampling={sampling} is not a sweep")


def policy(config: "PolicyConfig"):
    """AML's early-termination policy with the parameters the local pruner applies (None: no policy)."""
    from azure.ai.ml.sweep import BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy

    common = {"evaluation_interval": config.evaluation_interval, "delay_evaluation": config.delay_evaluation}
    if config.type == "none":
        return None
    if config.type == "bandit":
        slack = (
            {"slack_factor": config.slack_factor}
            if config.slack_factor is not None
            else {"slack_amount": config.slack_amount}
        )
        return BanditPolicy(**slack, **common)
    if config.type == "median":
        return MedianStoppingPolicy(**common)
    if config.type == "truncation":
        # AML v2 has no exclude_finished_jobs (SDK v1 HyperDrive had); the plan check refuses it set.
        return TruncationSelectionPolicy(truncation_percentage=config.truncation_percentage, **common)
    raise ValueError(f"unknown policy type {config.type!r}")


def sweep_node(plan: "RunPlan", trial, **inputs):
    """The sweep over ``trial`` (the training command); ``inputs`` binds its data inputs in a pipeline."""
    search, limits = plan.search, plan.search.limits
    node = trial(**inputs, **search_space(search.space))
    swept = node.sweep(
        sampling_algorithm=sampling_algorithm(search.sampling, search.seed),
        primary_metric=search.primary_metric,
        goal=search.goal,
        early_termination_policy=policy(search.policy),
        compute=plan.compute.cluster_name,
    )
    swept.set_limits(
        max_total_trials=limits.max_total_trials,
        max_concurrent_trials=limits.max_concurrent_trials,
        timeout=limits.timeout,
        trial_timeout=limits.trial_timeout,
    )
    swept.name = "sweep"
    swept.display_name = f"sweep {plan.model.name} ({search.name})"
    swept.experiment_name = plan.tracking.experiment
    return swept
