"""Typed schema of every config group.

Hydra merges the YAML files under ``conf/`` into these dataclasses (registered in a ConfigStore by
:func:`register`), so a wrong type in a file or an override fails at composition with the key named.
Each number declares its legal values where it is defined (``setting(default, Range)``, as the training
settings in :mod:`finetune.config.spec` do); :mod:`finetune.config.ranges` checks them all at plan time, and the checks
that need more than one key live next to each stage's code.

The same dataclasses are the stage specs of the run plan: a launcher receives them resolved
(``auto`` choices made, paths absolute) and never reads Hydra config itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from finetune.config.spec import (
    AT_LEAST_1,
    FRACTION_OPEN,
    GOALS,
    NON_NEGATIVE,
    SECONDS,
    SEED,
    TASKS,
    Hyperparameters,
    Objective,
    Range,
    Reporting,
    SpeedOptions,
    TrainingOptions,
    setting,
)

PORT = Range(0, 65535, unit=" (0 = a free port)")

# The legal values of the enum-like settings, declared once: the schema's ``setting(choices=)`` below and the
# stage checks that say more about a wrong value (finetune.data, finetune.search, finetune.serve.export) read these.
SOURCES = ("bundled", "amazon_5core", "file")
MODEL_SOURCES = ("package", "hub", "path")
DATA_TASKS = ("auto", *TASKS)
SAMPLINGS = ("none", "random", "grid", "bayesian")
POLICY_TYPES = ("none", "bandit", "median", "truncation")
RUNTIMES = ("torch", "onnx", "onnx-int8")
MULTICLASS_RULES = ("auto", "argmax", "prior_correction")
PLAN_VIEWS = ("short", "full")
MINUTES = Range(1, unit=" minutes")
BUDGETS = ("auto", "local", "none")


@dataclass
class SplitFiles:
    """A published split's files (a mapping would do, but OmegaConf cannot merge an override's mapping into a
    null or struct node: ``dataset.split_files={train: a, val: b, test: c}`` must work on any dataset)."""

    train: Optional[str] = None
    val: Optional[str] = None
    test: Optional[str] = None


@dataclass
class DatasetConfig:
    name: str = "amazon_automotive"
    # bundled: a file or folder inside finetune/data_files (`path`; default the cleaned Automotive reviews);
    # amazon_5core: McAuley 2014 5-core JSON.gz (from `url`, `category` or `path`); file: a CSV / TSV / JSONL /
    # parquet file of your own (a folder with `split_files`).
    source: str = setting("bundled", choices=SOURCES)
    path: Optional[str] = None
    url: Optional[str] = None
    category: Optional[str] = None
    text_column: str = "text"
    # Exactly one of label_column (labels used as-is) and rating_column (ratings mapped to sentiment).
    label_column: Optional[str] = None
    rating_column: Optional[str] = None
    positive_min_rating: float = setting(4.0, Range())
    negative_max_rating: float = setting(2.0, Range())
    train_fraction: float = setting(0.8, FRACTION_OPEN)
    val_fraction: float = setting(0.1, FRACTION_OPEN)
    test_fraction: float = setting(0.1, FRACTION_OPEN)
    sample: Optional[int] = setting(None, Range(10))
    seed: int = setting(0, SEED)
    cache_dir: str = "~/.cache/finetune"
    # auto: multi_label when label_separator is set or labels are lists.
    task: str = setting("auto", choices=DATA_TASKS)
    # Several labels in one string cell, split on this (e.g. "," or "|").
    label_separator: Optional[str] = None
    # One label name a line; label values are then 0-based ids into it. Relative to the data's folder.
    label_names_file: Optional[str] = None
    # Headerless CSV / TSV: the columns in order (the first line is then data).
    column_names: Optional[List[str]] = None
    # A published split, reproduced as it is: {train: FILE, val: FILE, test: FILE} inside the folder `path`.
    split_files: SplitFiles = field(default_factory=lambda: SplitFiles())
    # Or a column of one file holding train | val (validation, dev) | test per row.
    split_column: Optional[str] = None
    # Multi-label: keep a row whose label set is empty (otherwise it is an error).
    allow_empty_labels: bool = False

    def predefined_files(self) -> Dict[str, str]:
        """The split files that are set, by split name (empty: the split is computed)."""
        return {name: file for name, file in vars(self.split_files).items() if file}


@dataclass
class ModelConfig(Hyperparameters):
    """Where the base model is, plus its hyperparameters (defined once, in :mod:`finetune.config.spec`)."""

    name: str = "minilm-l6"
    # package: a model folder shipped inside an installed Python package; hub: a Hugging Face hub id;
    # path: a local folder. `path`, when set, always wins (a local copy of a hub model).
    source: str = setting("package", choices=MODEL_SOURCES)
    package: Optional[str] = None
    package_subdir: str = "model"
    hub_id: Optional[str] = None
    path: Optional[str] = None


@dataclass
class PolicyConfig:
    # Parameters carry AML's names and meanings.
    type: str = setting("none", choices=POLICY_TYPES)
    slack_factor: Optional[float] = setting(None, NON_NEGATIVE)
    slack_amount: Optional[float] = setting(None, NON_NEGATIVE)
    evaluation_interval: int = setting(1, AT_LEAST_1)
    delay_evaluation: int = setting(0, NON_NEGATIVE)
    truncation_percentage: Optional[int] = setting(None, Range(1, 99))
    exclude_finished_jobs: bool = False


@dataclass
class LimitsConfig:
    max_total_trials: int = setting(1, AT_LEAST_1)
    max_concurrent_trials: int = setting(1, AT_LEAST_1)
    timeout: Optional[int] = setting(None, SECONDS)  # for the whole sweep
    trial_timeout: Optional[int] = setting(None, SECONDS)  # per trial


@dataclass
class SearchConfig:
    name: str = "none"
    # none: one training run with the model's hyperparameters; the others: a sweep.
    sampling: str = setting("none", choices=SAMPLINGS)
    seed: int = setting(0, SEED)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # hyperparameter -> distribution, e.g. {type: loguniform, min: 1e-5, max: 1e-4} (AML vocabulary).
    space: Dict[str, Any] = field(default_factory=dict)
    primary_metric: str = Objective.primary_metric
    goal: str = setting(Objective.goal, choices=GOALS)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    keep_trial_models: bool = False  # models of trials other than the best are deleted unless set


@dataclass
class ComputeConfig(SpeedOptions):
    """The training process's speed switches (:mod:`finetune.config.spec`), where it runs and on how many GPUs."""

    name: str = "local"
    # local: this machine; azureml: an AML compute cluster (the AML launcher runs the plan).
    target: str = setting("local", choices=("local", "azureml"))
    gpus: int = setting(0, NON_NEGATIVE)  # GPUs per training process group on one machine (accelerate); 0 = none/auto
    # AML cluster; unused locally.
    cluster_name: Optional[str] = None
    vm_size: Optional[str] = None
    min_nodes: int = setting(0, NON_NEGATIVE)
    max_nodes: int = setting(1, AT_LEAST_1)
    low_priority: bool = False
    instance_count: int = setting(1, AT_LEAST_1)
    processes_per_node: int = setting(1, AT_LEAST_1)
    create_if_missing: bool = True
    idle_seconds_before_scaledown: int = setting(120, NON_NEGATIVE)
    hourly_price_usd: Optional[float] = setting(None, NON_NEGATIVE)
    gpus_per_node: int = setting(0, NON_NEGATIVE)
    # The GPU's compute capability (e.g. "8.0" for A100) and the CUDA build of torch AML jobs install
    # (finetune.launch.azureml.environment); a check refuses a build the GPU cannot run.
    gpu_arch: Optional[str] = None
    cuda: Optional[str] = None
    # The small CPU cluster that runs the test/register/deploy steps (None: the training cluster).
    steps_cluster_name: Optional[str] = None
    steps_vm_size: Optional[str] = None
    steps_hourly_price_usd: Optional[float] = setting(None, NON_NEGATIVE)


@dataclass
class AutomlConfig:
    # What trains the AutoML candidate. auto: `local` (FLAML) on local compute, `text_classification` (AML
    # AutoML NLP) on AML; none: no AutoML candidate.
    engine: str = setting("auto", choices=("auto", "local", "text_classification", "none"))
    # Seconds of the local baseline's search: FLAML's time budget, or the NER CRF's c1/c2 grid.
    time_budget_s: int = setting(60, SECONDS)
    # lrl2 first: its first trial is the TF-IDF + logistic regression one-liner the search must beat.
    estimators: List[str] = field(default_factory=lambda: ["lrl2", "sgd", "lgbm", "lrl1"])
    max_features: int = setting(50000, AT_LEAST_1)  # per feature kind (word 1-2 grams, char 3-5 grams)
    cv_folds: int = setting(3, Range(2))  # trials are scored by cross-validation on train
    # AML AutoML NLP settings.
    # auto: AUC_weighted for single-label data, accuracy (AutoML's only multi-label metric) for multi-label; or
    # one of AUC_weighted, accuracy, norm_macro_recall, average_precision_score_weighted, precision_score_weighted.
    primary_metric: str = "auto"
    language: str = "eng"
    timeout_minutes: int = setting(60, MINUTES)
    trial_timeout_minutes: Optional[int] = setting(None, MINUTES)
    max_trials: int = setting(1, AT_LEAST_1)
    max_concurrent_trials: int = setting(1, AT_LEAST_1)
    max_nodes: int = setting(1, AT_LEAST_1)
    # The one model AutoML NLP fine-tunes (e.g. bert-base-cased); None lets AutoML pick for the language.
    model_name: Optional[str] = None
    # AutoML NLP's own sweep: {sampling_algorithm, policy, space: [{model_name: ..., learning_rate: ...}]}, needs
    # max_trials >= 2; set it whole with ++ (it adds keys to an empty dict), e.g. ++automl.sweep='{sampling_algorithm:
    # random, policy: {type: bandit, slack_factor: 0.1}, space: [{model_name: {type: choice, values: [a, b]}}]}'.
    sweep: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EndpointConfig:
    # Where the model is served. auto: `local` on local compute, `managed` on AML; none: register only.
    target: str = setting("auto", choices=("auto", "local", "managed", "none"))
    # None: named after the registered model (finetune.serve.endpoint_names), so each dataset and task has its own.
    name: Optional[str] = None
    # How a fine-tuned transformer is served: torch (PyTorch fp32), onnx (ONNX Runtime fp32) or onnx-int8
    # (ONNX Runtime, dynamically quantised int8). The registered version carries that runtime's files only.
    runtime: str = setting("torch", choices=RUNTIMES)
    auth_mode: str = "key"
    host: str = "127.0.0.1"  # the local router's address; anything but loopback needs allow_remote
    # A host other than loopback exposes the router (key auth over plain HTTP) to the network: only when set.
    allow_remote: bool = False
    port: int = setting(0, PORT)  # the local router's port; 0 = a free one
    max_batch_items: int = setting(64, AT_LEAST_1)  # most texts in one scoring request (HTTP 400 beyond)
    # The smallest request, {"data":[{"text":""}]}, is 24 bytes.
    max_body_bytes: int = setting(1_000_000, Range(16, unit=" bytes"))
    max_forward_batch: int = setting(32, AT_LEAST_1)  # most texts in one forward pass inside score.py
    log_request_texts: bool = False  # request texts stay out of the logs unless this is set
    # Each step's share of the traffic for the new deployment; [100] switches at once.
    ramp: List[int] = setting([100], Range(1, 100, unit=" percent"))
    max_error_rate: float = setting(0.0, Range(0, 1))  # failed share of a ramp step's calls that aborts the rollout
    step_requests: int = setting(5, AT_LEAST_1)  # scoring calls at each ramp step to measure the error rate
    start_timeout_s: int = setting(180, SECONDS)  # local deployment: seconds until its server must answer GET /
    instance_type: str = "Standard_DS3_v2"
    instance_count: int = setting(1, AT_LEAST_1)
    request_timeout_ms: int = setting(5000, Range(0, unit=" ms (0 = sized from the model on AML)"))
    max_concurrent_requests_per_instance: int = setting(1, AT_LEAST_1)
    liveness_initial_delay_s: int = setting(30, NON_NEGATIVE)
    readiness_initial_delay_s: int = setting(30, NON_NEGATIVE)
    probe_period_s: int = setting(10, SECONDS)
    probe_failure_threshold: int = setting(30, AT_LEAST_1)


@dataclass
class BudgetConfig:
    """How much the whole run may take; the planner fits trials, epochs, concurrency and time limits into it
    (:mod:`finetune.plan.budget`). Unset minutes and usd keep the configured limits as they are."""

    # auto: `local` (the default local run's budget) on local compute, `none` on AML.
    name: str = setting("auto", choices=BUDGETS, help="auto = local on this machine, none on AML")
    minutes: Optional[float] = setting(
        None, Range(unit=" minutes"), help="wall clock of the whole run, every stage included; unset = no time budget"
    )
    usd: Optional[float] = setting(
        None,
        Range(unit=" USD"),
        help="AML: the most the run may cost in the worst case by the price table "
        "(compute.hourly_price_usd); unset = no cost budget",
    )
    max_trials: int = setting(
        16, AT_LEAST_1, help="the most trials a budget may buy (more rarely beat the best of this many random samples)"
    )


@dataclass
class WorkspaceConfig:
    subscription_id: Optional[str] = None
    resource_group: Optional[str] = None
    workspace_name: Optional[str] = None
    config_path: Optional[str] = None  # an AML config.json (MLClient.from_config convention)


# The train.* settings are the training contract's own section.
TrainConfig = TrainingOptions


@dataclass
class SelectConfig:
    metric: str = "auc_weighted"
    # A new model replaces production only when it beats it by more than this on the test split.
    margin: float = setting(0.0, Range(0, 1))  # every selection metric is in [0, 1]
    # None: <dataset>-<task> (the file's stem for dataset=file), so two datasets never share a model.
    registered_model_name: Optional[str] = None
    # A production model with other labels is kept (the run stops) unless this is set.
    replace_incompatible: bool = False
    # The decision rule each candidate ships is chosen on val by this metric (finetune.selection.rules).
    decision_metric: str = "f1_macro"
    multiclass_rule: str = setting("auto", choices=MULTICLASS_RULES)


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None = sqlite file under output_root
    experiment: str = Reporting.experiment


@dataclass
class SubmitConfig:
    # AML compute: stream the submitted pipeline job until it ends (a local run always runs to its end).
    wait: bool = False


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    automl: AutomlConfig = field(default_factory=AutomlConfig)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    output_root: str = "outputs"
    run_name: Optional[str] = None
    dry_run: bool = False
    seed: int = setting(0, SEED)
    # How much of the plan the CLI prints before running it.
    plan_view: str = setting("short", choices=PLAN_VIEWS)


# The key a group's option sets: `automl=local` is `automl.engine=local`, `endpoint=auto` is `endpoint.target=auto`,
# `budget=none` is `budget.name=none`.
CHOICE_KEYS = {"automl": "engine", "endpoint": "target", "budget": "name"}

# Keys an earlier release took, with the key that replaced each: the CLI names the new one instead of
# answering "unknown setting". A renamed section renames every key under it.
RENAMED_KEYS = {"automl.kind": "automl.engine", "endpoint.kind": "endpoint.target", "launcher": "submit"}


def renamed(key: str) -> Optional[str]:
    """The key that replaced ``key``, or None when it was not renamed."""
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def register() -> None:
    """Make ``config_schema`` available to the primary config's defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)
