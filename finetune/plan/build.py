"""From a composed config to a checked :class:`~finetune.plan.run_plan.RunPlan`.

``build_plan`` resolves what composition leaves open (the launcher, where the model is, the run directory)
and validates everything at once. Each check lives next to the code it protects and is listed in
``CHECKS``; the launcher the plan runs on adds its own rules (:mod:`finetune.launch`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable, List, Optional

from finetune.config.model_files import check_model, package_model_dir
from finetune.config.ranges import check_max_length, check_values, problem_key
from finetune.config.schema import Config, DatasetConfig
from finetune.data.labels import check_labels
from finetune.data.multilabel import planned_task
from finetune.data.sources import check_source
from finetune.data.split import check_split
from finetune.errors import ConfigProblems
from finetune.launch import launcher, launcher_name
from finetune.plan.fitting import check_budget
from finetune.plan.run_plan import RunPlan
from finetune.search.validation import check_search
from finetune.selection.automl import check_config as automl_problems
from finetune.selection.choose import check_config as select_problems
from finetune.serve.endpoint_names import endpoint_name
from finetune.serve.export import check_runtime as runtime_problems
from finetune.tasks import with_task_metrics
from finetune.train.hardware import check_compute


def build_plan(cfg: Config, overrides: List[str], name: str, index: Optional[int] = None) -> RunPlan:
    """The validated plan of one composed config; `name` is the run name unless `run_name=` is set, and
    `index` (a multirun job's number) is appended either way so the jobs of one multirun never share a dir."""
    stages = ["data", "train" if cfg.search.sampling == "none" else "search"]
    if cfg.endpoint.runtime != "torch":
        stages.append("export")
    if cfg.automl.engine != "none":
        stages.append("automl")
    stages += ["select", "register"]
    if cfg.endpoint.target != "none":
        stages.append("deploy")
    run_name = cfg.run_name or name
    if index is not None:
        run_name = f"{run_name}-{index}"
    # A searched batch size is each trial's hyperparameter: the hardware must not re-size it. Resolved
    # here, so the printed plan says what every training command gets, on either launcher.
    compute = dataclasses.replace(
        cfg.compute, auto_batch_size=cfg.compute.auto_batch_size and "batch_size" not in cfg.search.space
    )
    # Only an unset name is derived: an empty one is a mistake the name check reports.
    model_name = (
        registered_model_name(cfg.dataset)
        if cfg.select.registered_model_name is None
        else cfg.select.registered_model_name
    )
    # The endpoint follows the registered model: a second dataset's rollout must not replace the first's.
    endpoint = (
        dataclasses.replace(cfg.endpoint, name=endpoint_name(model_name)) if cfg.endpoint.name is None else cfg.endpoint
    )
    plan = RunPlan(
        name=run_name,
        run_dir=str(Path(cfg.output_root).expanduser().resolve() / run_name),
        launcher=launcher_name(cfg.compute.target),
        stages=stages,
        dataset=cfg.dataset,
        model=dataclasses.replace(cfg.model),
        search=cfg.search,
        compute=compute,
        automl=cfg.automl,
        endpoint=endpoint,
        workspace=cfg.workspace,
        train=cfg.train,
        select=dataclasses.replace(cfg.select, registered_model_name=model_name),
        tracking=dataclasses.replace(
            cfg.tracking,
            uri=cfg.tracking.uri or f"sqlite:///{Path(cfg.output_root).expanduser().resolve() / 'mlflow.db'}",
        ),
        submit=cfg.submit,
        seed=cfg.seed,
        dry_run=cfg.dry_run,
        overrides=list(overrides),
        budget=cfg.budget,
    )
    if plan.dataset.task == "auto":
        # Decided before the checks, when the settings or the first rows tell: the per-task checks (the sweep
        # objective, the selection metric) then judge the task that runs, and the printed plan names it.
        plan.dataset = dataclasses.replace(plan.dataset, task=planned_task(plan.dataset))
    plan = with_task_metrics(plan)
    runner = launcher(plan.launcher)
    problems = [problem for check in (*CHECKS, runner.check) for problem in check(plan)]
    # The generic ranges are the floor: a stage check that already named a key says more about it.
    named = {problem_key(problem) for problem in problems}
    problems += [problem for problem in check_values(plan) if problem_key(problem) not in named]
    if problems:
        raise ConfigProblems(problems)
    if plan.model.source == "package" and not plan.model.path:
        plan.model.path = str(package_model_dir(plan.model))
    # Last: a budget is fitted to the model the plan trains.
    return runner.resolve(plan)


def registered_model_name(dataset: DatasetConfig) -> str:
    """``<dataset>-<task>``: the file's stem (or the 5-core category) names the data, ``sentiment`` or the
    label column the task, so runs on different data never register (and promote) under one name."""
    if dataset.source in ("file", "amazon_5core") and (dataset.path or dataset.url):
        source = re.sub(r"(\.(csv|tsv|jsonl?|parquet|gz))+$", "", Path(dataset.path or dataset.url).name, flags=re.I)
    elif dataset.source == "amazon_5core" and dataset.category:
        source = f"{dataset.name}-{dataset.category}"
    else:
        source = dataset.name
    task = "sentiment" if dataset.rating_column else "ner" if dataset.task == "ner" else dataset.label_column or "label"
    # AML model names allow letters, digits, '-', '_' and '.', and start with a letter or digit.
    return re.sub(r"[^a-z0-9_.-]+", "-", f"{source}-{task}".lower()).strip("-._")[:255]


# The stages' checks that load heavy modules (scikit-learn, the serving code) import them only when called.


def check_select(plan: RunPlan) -> List[str]:
    return select_problems(plan.select, plan.dataset.task)


def check_automl(plan: RunPlan) -> List[str]:
    return automl_problems(plan.automl) if plan.automl.engine == "local" else []


def check_runtime(plan: RunPlan) -> List[str]:
    return runtime_problems(plan.endpoint.runtime)


CHECKS: List[Callable[[RunPlan], List[str]]] = [
    check_split,
    check_labels,
    check_source,
    check_model,
    check_search,
    check_compute,
    check_automl,
    check_select,
    check_max_length,
    check_runtime,
    check_budget,
]
