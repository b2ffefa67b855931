"""The plan as people read it before a run: a short view grouped by stage, with what differs from the defaults marked.

The short view shows, per group, the keys that decide what the chosen launcher does (no AML cluster keys on
a local run, no probe delays on a local endpoint) plus every key that differs from the shipped defaults;
``plan_view=full`` prints every resolved key. Keys that differ from what ``python -m finetune`` with no
overrides would run are marked ``*`` in both views, so a reader sees at a glance what this run changes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, List, Optional

from finetune.config.schema import CHOICE_KEYS
from finetune.plan.budget import stages_line

MARK = "*"

# group title -> (plan section, keys shown on every launcher, keys shown locally, keys shown on AML)
SHORT_VIEW = {
    "data": (
        "dataset",
        ("name", "source", "task", "path", "url", "category", "text_column", "label_column", "rating_column", "sample"),
        (),
        (),
    ),
    "model": (
        "model",
        (
            "name",
            "hub_id",
            "path",
            "learning_rate",
            "batch_size",
            "epochs",
            "max_length",
            "warmup_ratio",
            "weight_decay",
            "head_lr_factor",
        ),
        (),
        (),
    ),
    "search": (
        "search",
        (
            "name",
            "sampling",
            "policy.type",
            "policy.slack_factor",
            "policy.slack_amount",
            "policy.evaluation_interval",
            "policy.delay_evaluation",
            "policy.truncation_percentage",
            "space",
            "primary_metric",
            "goal",
            "limits.max_total_trials",
            "limits.max_concurrent_trials",
            "limits.timeout",
            "limits.trial_timeout",
        ),
        (),
        (),
    ),
    "compute": (
        "compute",
        ("name", "precision"),
        ("device", "num_threads", "gpus"),
        ("cluster_name", "vm_size", "gpus_per_node", "max_nodes", "instance_count", "low_priority", "hourly_price_usd"),
    ),
    "automl": ("automl", ("engine",), ("time_budget_s", "estimators"), ("model_name", "timeout_minutes", "max_trials")),
    "select": ("select", ("metric", "margin", "registered_model_name"), (), ()),
    "endpoint": ("endpoint", ("target", "name", "ramp"), ("port",), ("instance_type", "instance_count")),
}


def flatten(data: dict, prefix: str = ""):
    """Dotted keys of nested dicts; a search space stays one value (it reads better whole)."""
    for key, value in data.items():
        if isinstance(value, dict) and key != "space" and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def changed_keys(config, defaults) -> List[str]:
    """Dotted keys whose value in the composed ``config`` differs from the shipped ``defaults`` (both Config)."""
    mine, shipped = dict(flatten(dataclasses.asdict(config))), dict(flatten(dataclasses.asdict(defaults)))
    return sorted(key for key, value in mine.items() if shipped.get(key, object()) != value)


def _text(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _group_rows(plan, section: str, keys: Iterable[str], changed: set) -> list:
    values = dict(flatten(dataclasses.asdict(getattr(plan, section))))
    # A changed key that is now unset (model.package after model=bert-base-cased) says nothing worth a row.
    wanted = list(keys) + [
        k[len(section) + 1 :]
        for k in sorted(changed)
        if k.startswith(section + ".") and values.get(k[len(section) + 1 :]) is not None
    ]
    rows = []
    for key in dict.fromkeys(wanted):
        value = values.get(key)
        if value not in (None, {}, []) or f"{section}.{key}" in changed and key in keys:
            rows.append((key, _text(value), f"{section}.{key}" in changed))
    return rows


def short(plan, changed: Iterable[str] = ()) -> str:
    """The grouped view: what matters for ``plan.launcher`` and everything the user changed."""
    changed = set(changed)
    local = plan.launcher == "local"
    run_mark = MARK if changed & {"run_name", "output_root"} else " "
    lines = [
        f"run    {run_mark} {plan.name} -> {plan.run_dir}",
        f"launcher {plan.launcher}",
        f"stages   {' -> '.join(plan.stages)}",
    ]
    for title, (section, common, local_keys, aml_keys) in SHORT_VIEW.items():
        if title == "search" and "search" not in plan.stages:
            common = ("name",)
        if title == "automl" and "automl" not in plan.stages or title == "endpoint" and "deploy" not in plan.stages:
            common, local_keys, aml_keys = (CHOICE_KEYS[title],), (), ()
        rows = _group_rows(plan, section, (*common, *(local_keys if local else aml_keys)), changed)
        if rows:
            width = max(len(key) for key, _, _ in rows)
            lines.append(f"{title}:")
            lines += [f" {MARK if mark else ' '} {key:<{width}}  {value}" for key, value, mark in rows]
    if "seed" in changed:
        lines.append(f"other:\n {MARK} seed  {plan.seed}")
    lines += estimate_lines(plan, changed)
    lines.append(f"({MARK} differs from the shipped defaults; plan_view=full lists every key)")
    return "\n".join(lines)


def estimate_lines(plan, changed: Iterable[str] = ()) -> List[str]:
    """The budget, what it bought and the expected wall time of each stage (nothing without a budget)."""
    estimate = plan.estimate
    if estimate is None:
        return []
    keys = [
        (key, value) for key, value in (("minutes", plan.budget.minutes), ("usd", plan.budget.usd)) if value is not None
    ]
    mark = MARK if any(f"budget.{key}" in set(changed) for key, _ in keys) else " "
    budget = " ".join(f"budget.{key}={value:g}" for key, value in keys)
    lines = [f"budget {mark} {budget}: {estimate.reason}", f"  expected: {stages_line(estimate)}"]
    if estimate.cost_usd is not None:
        lines.append(f"  expected cost ${estimate.cost_usd:,.2f} (the worst case by the limits follows the plan)")
    return lines + [f"  from: {estimate.basis}"]


def full(plan, changed: Iterable[str] = ()) -> str:
    """Every resolved key, one per row, marked where it differs from the shipped defaults."""
    changed = set(changed)
    rows = [
        ("run", f"{plan.name} -> {plan.run_dir}", False),
        ("launcher", plan.launcher, False),
        ("stages", " -> ".join(plan.stages), False),
    ]
    for section in (
        "dataset",
        "model",
        "search",
        "compute",
        "automl",
        "endpoint",
        "train",
        "select",
        "tracking",
        "budget",
    ):
        for key, value in flatten(dataclasses.asdict(getattr(plan, section))):
            full_key = f"{section}.{key}"
            if full_key in changed or value not in (None, {}, []):
                rows.append((full_key, _text(value), full_key in changed))
    width = max(len(key) for key, _, _ in rows)
    lines = [f"{MARK if mark else ' '} {key:<{width}}  {value}" for key, value, mark in rows]
    return "\n".join(lines + estimate_lines(plan, changed) + [f"({MARK} differs from the shipped defaults)"])


def render(plan, changed: Iterable[str] = (), view: Optional[str] = "short") -> str:
    return full(plan, changed) if view == "full" else short(plan, changed)
