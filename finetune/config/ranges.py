"""The allowed values of every setting: a range for each number, a set for each enum-like string, a
pattern for each name that becomes a path, all checked at plan time (by :func:`finetune.plan.build.build_plan`).
Every setting declares its legal values where it is defined (:mod:`finetune.config.spec`, :mod:`finetune.config.schema`);
this module collects and checks them.

Without these a bad value passes the plan and fails after data preparation, training or registration
(``endpoint.port=70000`` after registering, ``model.epochs=inf`` inside the Trainer, ``run_name=..``
making the parent of ``output_root`` the run folder). Stage checks that say more about a key (a sweep's
limits, the split fractions) speak first: :func:`finetune.plan.build.build_plan` drops this module's line for
a key another check already reported. ``tests/test_ranges.py`` fails when a numeric field of the schema
declares no range, so a new setting cannot skip the rule.

Standard library only: this runs while every plan is validated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple

from finetune.config.model_files import hub_cached_dir, package_model_dir
from finetune.config.schema import Config
from finetune.search.validation import objective_problems

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan


def _declared(schema: type, prefix: str = ""):
    """(key, range, choices) of every setting of ``schema`` that declares its legal values
    (:func:`finetune.config.spec.setting`); a list's key ends in ``[]``: its range is its items'."""
    hints = typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            yield from _declared(hint, f"{prefix}{item.name}.")
        elif item.metadata.get("range") is not None or item.metadata.get("choices"):
            items = "[]" if typing.get_origin(hint) is list else ""
            choices = item.metadata.get("choices")
            # A choice whose default is None (null: decided by the plan) may stay unset.
            if choices and item.default is None:
                choices = (*choices, None)
            yield f"{prefix}{item.name}{items}", item.metadata.get("range"), choices


# Every number of the schema, by its key in the plan.
RANGES = {key: legal for key, legal, _ in _declared(Config) if legal is not None}
# Every enum-like string of the plan's sections (stage checks that say more about one speak first, see build_plan);
# a top-level one (plan_view) is the CLI's to check: the plan does not carry it.
CHOICES = {key: choices for key, _, choices in _declared(Config) if choices and "." in key}

# Names that become folder names (run_name under output_root, endpoint.name under <output_root>/endpoints)
# or registry names that become folder names on download: one plain path component, nothing to climb with.
RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,127}$")
# AML asset names (models): letters, digits, '-', '_', '.', a letter or digit first, up to 255 characters
# (https://learn.microsoft.com/azure/machine-learning/how-to-manage-models, "Model name" rules); MLflow
# takes any string, so AML's rule is the one both registries accept.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


def check_values(plan: "RunPlan") -> List[str]:
    """Every out-of-range number, non-finite float, unknown choice and unsafe name of ``plan``."""
    problems = []
    for key, value in _leaves(plan):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}={value}: must be a finite number")
            continue
        rule = RANGES.get(re.sub(r"\[\d+\]$", "[]", key))
        if (
            rule is not None
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not rule.contains(value)
        ):
            problems.append(f"{key}={value}: must be {rule.describe()}")
    for key, allowed in CHOICES.items():
        value = _get(plan, key)
        if value not in allowed:
            problems.append(f"{key}={value}: use one of {', '.join('null' if c is None else c for c in allowed)}")
    # Checked for a single run too: training keeps its best evaluation by this metric.
    problems += objective_problems(plan)
    problems += name_problems(plan)
    problems += output_root_problems(plan)
    for key in ("dataset.text_column", "dataset.label_column", "dataset.rating_column"):
        value = _get(plan, key)
        if value is not None and not str(value).strip():
            problems.append(f"{key}='': name a column of the data (or null where the setting is optional)")
    problems += tracking_problems(plan)
    if not plan.tracking.experiment or not plan.tracking.experiment.strip():
        problems.append(
            f"tracking.experiment={plan.tracking.experiment!r}: name the MLflow experiment, "
            "e.g. tracking.experiment=finetune"
        )
    return problems


def name_problems(plan: "RunPlan") -> List[str]:
    problems = []
    if not RUN_NAME.match(plan.name) or plan.name in (".", ".."):
        problems.append(
            f"run_name={plan.name!r}: becomes a folder under output_root; use letters, digits and "
            "_ . + = @ - (128 at most, not starting with '.' or '-'), e.g. run_name=baseline-1"
        )
    name = plan.select.registered_model_name
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        problems.append(
            f"select.registered_model_name={name!r}: use letters, digits, '-', '_' and '.', starting "
            "with a letter or digit (255 at most), e.g. automotive-sentiment"
        )
    return problems


# Store URIs MLflow opens (mlflow.tracking._tracking_service.utils: file, databases through SQLAlchemy,
# tracking servers, Databricks, and AML's azureml:// from azureml-mlflow); anything else fails at the first
# log call, after data preparation.
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "azureml")


def tracking_problems(plan: "RunPlan") -> List[str]:
    uri = plan.tracking.uri
    if not uri:
        return []
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES and not re.fullmatch(r"[a-z]", scheme):  # C:\ is a path
        return [
            f"tracking.uri={uri}: MLflow cannot open a {scheme}:// store; use sqlite:///PATH, a folder, "
            "http(s)://SERVER or null (a sqlite file under output_root)"
        ]
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        return [f"tracking.uri={uri}: a sqlite store is sqlite:///PATH (three slashes, then the path)"]
    return []


def output_root_problems(plan: "RunPlan") -> List[str]:
    """The run folder must be creatable: no file on the way, a writable folder where creation starts."""
    run_dir = Path(plan.run_dir)
    is_a_run = (run_dir / "plan.json").is_file() or (run_dir / "aml" / "settings.json").is_file()
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_a_run:
        # A run writes plan.json first (an AML dry run only aml/, whose settings.json holds the plan): a folder with other things and no plan is
        # not a run's, and stages replace the folders they own inside it (data/, train/, select/, aml/).
        return [
            f"run_name={plan.name}: {run_dir} already holds files that are not a finetune run's; choose "
            "another run_name or output_root"
        ]
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                return [f"output_root={run_dir.parent}: {parent} is a file, not a folder; choose another output_root"]
            if not os.access(parent, os.W_OK | os.X_OK):
                return [f"output_root={run_dir.parent}: {parent} is not writable; choose another output_root"]
            return []
    return []


def _leaves(plan: "RunPlan") -> Iterator[Tuple[str, Any]]:
    for section in (
        "dataset",
        "model",
        "search",
        "compute",
        "automl",
        "endpoint",
        "workspace",
        "train",
        "select",
        "tracking",
    ):
        yield from _walk(dataclasses.asdict(getattr(plan, section)), section)
    yield "seed", plan.seed


def _walk(value: Any, key: str) -> Iterator[Tuple[str, Any]]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _walk(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{key}[{index}]")
    else:
        yield key, value


def _get(plan: "RunPlan", key: str) -> Any:
    value: Any = plan
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_max_length(plan: "RunPlan") -> List[str]:
    """``model.max_length`` (and a searched max_length) within the encoder's positions, read from its
    config.json: beyond them training crashes on the first long text, or scoring does later."""
    limit, where = encoder_positions(plan)
    if limit is None:
        return []
    problems = []
    if plan.model.max_length > limit:
        problems.append(
            f"model.max_length={plan.model.max_length}: {where} has {limit} positions; "
            f"use model.max_length={limit} or less"
        )
    dimension = plan.search.space.get("max_length") if plan.search.sampling != "none" else None
    highest = _highest(dimension) if isinstance(dimension, dict) else None
    if highest is not None and highest > limit:
        problems.append(
            f"search.space.max_length={dimension}: reaches {highest:g} but {where} has {limit} "
            f"positions; keep it <= {limit}"
        )
    return problems


def encoder_positions(plan: "RunPlan") -> Tuple[Optional[int], str]:
    """(most tokens the model takes, its folder) from config.json and tokenizer_config.json; (None, "") when
    the model's files are not on this machine (a hub model not downloaded yet)."""
    import json

    model = plan.model
    if model.path:
        folder = Path(model.path).expanduser()
    elif model.source == "package":
        folder = package_model_dir(model)
    else:
        folder = hub_cached_dir(model.hub_id) if model.hub_id else None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder else None
    except (OSError, ValueError):
        return None, ""
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(positions, int):
        return None, ""
    # RoBERTa-style encoders number positions from padding_idx + 1, so two of them are never a token's.
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text"):
        positions -= int(config.get("pad_token_id", 1)) + 1
    try:
        tokenizer = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        declared = tokenizer.get("model_max_length")
        # transformers writes 1e30 (VERY_LARGE_INTEGER) when a tokenizer declares no limit.
        if isinstance(declared, (int, float)) and 0 < declared < 1e9:
            positions = min(positions, int(declared))
    except (OSError, ValueError, AttributeError):
        pass
    return positions, str(folder)


def _highest(dimension: dict) -> Optional[float]:
    kind = dimension.get("type")
    try:
        if kind == "choice":
            return max(float(v) for v in dimension.get("values", []))
        if kind == "randint":
            return float(dimension["upper"]) - 1
        if kind in ("uniform", "quniform", "loguniform", "qloguniform"):
            return float(dimension["max"])
    except (TypeError, ValueError, KeyError):
        return None
    return None  # normal distributions have no upper bound to compare


def problem_key(problem: str) -> str:
    """The setting a problem line names: the text before its first '=' (``model.epochs=inf: ...``), list
    indexes dropped (``endpoint.ramp[0]`` is about ``endpoint.ramp``)."""
    return re.sub(r"\[\d+\]", "", problem.split("=", 1)[0].split(":", 1)[0].strip())
