"""AML AutoML NLP's rules for the ``automl`` config: the primary metrics each task's job accepts, its own search
space parameters and trainable models, and its sweep's shape. azure-ai-ml builds the job from any of these and
the service (or the SDK's schema, at dump time) refuses it later; checked with the other AML plan checks.

Standard library only: this runs while any plan is validated.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, List

from finetune.config.schema import PolicyConfig
from finetune.search.policies import policy_problems
from finetune.search.space import DISTRIBUTIONS

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

# The primary metrics AutoML NLP text classification accepts (any case); anything else is a KeyError
# inside the SDK, and an empty metric silently becomes accuracy.
AUTOML_METRICS = (
    "AUC_weighted",
    "accuracy",
    "norm_macro_recall",
    "average_precision_score_weighted",
    "precision_score_weighted",
)


# Multi-label AutoML NLP (text_classification_multilabel) takes accuracy alone. The job's constructor accepts
# every ClassificationMultilabelPrimaryMetrics member (azure/ai/ml/entities/_job/automl/nlp/
# text_classification_multilabel_job.py), but its schema, used to dump and send the job, allows only ACCURACY
# (azure/ai/ml/_schema/automl/nlp_vertical/text_classification_multilabel.py: AUC_weighted is a ValidationError
# there), and the REST reference says "Currently only Accuracy is supported as primary metric"
# (https://learn.microsoft.com/javascript/api/@azure/arm-machinelearning/textclassificationmultilabel).
AUTOML_MULTILABEL_METRICS = ("accuracy",)


# automl.primary_metric=auto: the metric of each task when the config leaves it to the data.
# AutoML NER supports accuracy only ("Primary metric for Text-NER task. Only 'Accuracy' is supported":
# https://learn.microsoft.com/javascript/api/@azure/arm-machinelearning/textner, primaryMetric; azureml-examples'
# cli-automl-text-ner-conll2003.yml sets primary_metric: accuracy). Our selection still scores its model by entity F1.
AUTOML_DEFAULT_METRICS = {"single_label": "AUC_weighted", "multi_label": "accuracy", "ner": "accuracy"}


AUTOML_NER_METRICS = ("accuracy",)


# AutoML NLP's own search space parameters and models (azure.ai.ml.automl.SearchSpace / NlpSearchSpace).
AUTOML_SEARCH_PARAMETERS = (
    "gradient_accumulation_steps",
    "learning_rate",
    "learning_rate_scheduler",
    "model_name",
    "number_of_epochs",
    "training_batch_size",
    "validation_batch_size",
    "warmup_ratio",
    "weight_decay",
)


AUTOML_MODELS = (
    "bert-base-cased",
    "bert-base-uncased",
    "bert-base-multilingual-cased",
    "bert-base-german-cased",
    "bert-large-cased",
    "bert-large-uncased",
    "distilbert-base-cased",
    "distilbert-base-uncased",
    "roberta-base",
    "roberta-large",
    "distilroberta-base",
    "xlm-roberta-base",
    "xlm-roberta-large",
    "xlnet-base-cased",
    "xlnet-large-cased",
)


AUTOML_SWEEP_KEYS = ("sampling_algorithm", "policy", "space")


SAMPLING_ALGORITHMS = ("random", "grid", "bayesian")


def automl_problems(plan: "RunPlan") -> List[str]:
    automl, problems = plan.automl, []
    if automl.engine == "none":
        return []
    if automl.engine != "text_classification":
        return [
            f"automl.engine={automl.engine}: on AML compute use automl=text_classification (AML AutoML NLP) "
            "or automl=none"
        ]
    problems += automl_metric_problems(automl, plan.dataset.task)
    if not re.fullmatch(r"[a-z]{3}", automl.language or ""):
        problems.append(
            f"automl.language={automl.language}: a three-letter ISO 639-3 code, e.g. eng (mul for multilingual)"
        )
    if plan.compute.gpus_per_node < 1:
        problems.append(
            f"automl.engine=text_classification: AutoML NLP trains on GPU nodes only and "
            f"compute={plan.compute.name} has none; use compute=t4/a100/a100x4/h100 or automl=none"
        )
    for name in ("timeout_minutes", "max_trials", "max_concurrent_trials", "max_nodes"):
        if getattr(automl, name) < 1:
            problems.append(f"automl.{name}={getattr(automl, name)}: must be >= 1")
    if automl.trial_timeout_minutes is not None and automl.trial_timeout_minutes < 1:
        problems.append(f"automl.trial_timeout_minutes={automl.trial_timeout_minutes}: must be >= 1 (or null)")
    if automl.max_concurrent_trials > automl.max_trials >= 1:
        problems.append(
            f"automl.max_concurrent_trials={automl.max_concurrent_trials}: more than max_trials={automl.max_trials}"
        )
    if automl.max_nodes > plan.compute.max_nodes >= 1:
        problems.append(
            f"automl.max_nodes={automl.max_nodes}: more than the cluster's compute.max_nodes={plan.compute.max_nodes}"
        )
    if automl.model_name is not None and automl.model_name not in AUTOML_MODELS:
        problems.append(f"automl.model_name={automl.model_name}: AutoML NLP trains one of {', '.join(AUTOML_MODELS)}")
    return problems + _automl_sweep_problems(automl)


def automl_metric(automl, task: str) -> str:
    """The primary metric the AutoML job is built with: the configured one, or the task's for ``auto``."""
    if automl.primary_metric == "auto":
        return AUTOML_DEFAULT_METRICS.get(task, AUTOML_DEFAULT_METRICS["single_label"])
    return automl.primary_metric


def automl_metric_problems(automl, task: str) -> List[str]:
    """``automl.primary_metric`` against the task's list (``dataset.task=auto``: the single-label one until the
    prepared data tells, then :func:`with_task` checks it again)."""
    if automl.primary_metric == "auto":
        return []
    if task == "ner":
        legal, job = AUTOML_NER_METRICS, "named-entity recognition (text_ner)"
    elif task == "multi_label":
        legal, job = AUTOML_MULTILABEL_METRICS, "multi-label text classification (text_classification_multilabel)"
    else:
        legal, job = AUTOML_METRICS, "text classification"
    if automl.primary_metric.lower() in [metric.lower() for metric in legal]:
        return []
    return [f"automl.primary_metric={automl.primary_metric}: AutoML {job} accepts {', '.join(legal)} (or auto)"]


def _automl_sweep_problems(automl) -> List[str]:
    sweep, key = automl.sweep, "automl.sweep"
    if not sweep:
        return []
    problems = [
        f"{key}.{name}: unknown; use {', '.join(AUTOML_SWEEP_KEYS)}" for name in sweep if name not in AUTOML_SWEEP_KEYS
    ]
    sampling = sweep.get("sampling_algorithm", "random")
    if sampling not in SAMPLING_ALGORITHMS:
        problems.append(f"{key}.sampling_algorithm={sampling}: use one of {', '.join(SAMPLING_ALGORITHMS)}")
    if automl.max_trials < 2:
        problems.append(f"{key}: a sweep needs automl.max_trials >= 2 (it is {automl.max_trials})")
    policy = dict(sweep.get("policy") or {"type": "none"})
    try:
        problems += [
            p.replace("search.policy", f"{key}.policy") for p in policy_problems(PolicyConfig(**policy), sampling)
        ]
    except TypeError as error:
        problems.append(f"{key}.policy={policy}: {error}")
    subspaces = sweep.get("space") or []
    if isinstance(subspaces, dict):
        subspaces = [subspaces]
    if not subspaces:
        problems.append(
            f"{key}.space: empty; e.g. [{{model_name: {{type: choice, values: [bert-base-cased, roberta-base]}}}}}}]"
        )
    for index, subspace in enumerate(subspaces):
        for name, value in (subspace or {}).items():
            where = f"{key}.space[{index}].{name}"
            if name not in AUTOML_SEARCH_PARAMETERS:
                problems.append(f"{where}: not an AutoML NLP parameter; use {', '.join(AUTOML_SEARCH_PARAMETERS)}")
                continue
            if not isinstance(value, dict):
                continue  # a fixed value
            kind = value.get("type")
            if kind not in DISTRIBUTIONS:
                problems.append(f"{where}.type={kind}: use one of {', '.join(DISTRIBUTIONS)}")
            elif sorted(k for k in value if k != "type") != sorted(DISTRIBUTIONS[kind]):
                problems.append(f"{where}: {kind} takes {', '.join(DISTRIBUTIONS[kind])}")
            elif kind == "choice" and not value["values"]:
                problems.append(f"{where}.values=[]: empty choice")
            elif "min" in value and not value["min"] < value["max"]:
                problems.append(f"{where}.min={value['min']}: must be below max={value['max']}")
            elif name == "model_name" and kind == "choice":
                unknown = [m for m in value["values"] if m not in AUTOML_MODELS]
                if unknown:
                    problems.append(
                        f"{where}.values: {', '.join(map(str, unknown))} not trainable by AutoML NLP; "
                        f"use {', '.join(AUTOML_MODELS)}"
                    )
    return problems
