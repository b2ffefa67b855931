"""What a registered version records about where it came from, and the one select-and-register flow.

Both launchers select and register through :func:`select_and_register`, over a
:class:`~finetune.registry.model_registry.ModelRegistry` (MLflow's locally, AML's on AML): production is
re-scored beside the run's candidates, :func:`finetune.selection.choose.choose` gives the verdict, and a
winner is registered with :func:`selection_tags` (its test metrics, data and config hashes, source) and a
model card from :func:`card_facts`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from finetune.plan.results import Registration, SelectionOutcome
from finetune.registry.model_registry import ModelRegistry, register_folder, stage_artifact
from finetune.selection.choose import PRODUCTION, check_production_labels, choose
from finetune.selection.decisions import DecisionSettings, Verdict
from finetune.tasks import task_of

if TYPE_CHECKING:
    from finetune.plan.results import SelectionResult

SAMPLE_SIZE = 3


def selection_tags(selection: "SelectionResult", data: dict, config: dict, source: Optional[str]) -> dict:
    """Version tags that say where a model came from and how it compared.

    ``test_<metric>.<candidate>`` for every scored candidate (the production model included; multi-label
    models also ``test_f1_micro`` and ``test_f1_macro``), the task, the
    data and split hashes, a hash of the run's config without its run identity (name, directory), so
    equal settings give equal hashes, and the source run or trial of the winner.
    """
    metric = selection.metric
    task = data.get("task", "single_label")
    tags = {
        "selection.metric": metric,
        "selection.decision": selection.verdict.value,
        "task": task,
        "candidate": selection.winner,
        "source": source,
        "data.raw_sha256": data.get("raw_sha256"),
    }
    # Multi-label models are compared by their F1s as well: AUC alone hides what the thresholds do.
    recorded = dict.fromkeys([metric, *(("f1_micro", "f1_macro") if task == "multi_label" else ())])
    for row in selection.scored:
        for name in recorded:
            if name in row.test:
                tags[f"test_{name}.{row.candidate}"] = f"{row.test[name]:.6f}"
    for split, info in data.get("splits", {}).items():
        tags[f"data.{split}_sha256"] = info.get("sha256")
    tags["config_sha256"] = config_hash(config)
    return tags


# Plan keys that name the run or this machine rather than the settings that produced a model.
IDENTITY_KEYS = ("name", "run_dir", "dry_run", "overrides", "workspace", "submit")
MACHINE_KEYS = {"dataset": ("path", "cache_dir"), "model": ("path",), "tracking": ("uri",)}


def job_config(config: dict) -> dict:
    """A plan's settings without its identity, workspace or machine paths: what may travel to a job."""
    result = {key: value for key, value in config.items() if key not in IDENTITY_KEYS}
    for section, keys in MACHINE_KEYS.items():
        if isinstance(result.get(section), dict):
            result[section] = {key: value for key, value in result[section].items() if key not in keys}
    return result


def config_hash(config: dict) -> str:
    """sha256 of :func:`job_config`: equal settings, equal hash, on either launcher."""
    return hashlib.sha256(json.dumps(job_config(config), sort_keys=True, default=str).encode()).hexdigest()


def card_facts(config: dict, data: dict, selection: "SelectionResult") -> dict:
    """What the model card says about where the winner came from (see :func:`finetune.registry.packaging.model_card`)."""
    model, dataset = config.get("model") or {}, config.get("dataset") or {}
    winner = selection.winner
    return {
        "name": (config.get("select") or {}).get("registered_model_name"),
        "base_model": (model.get("hub_id") or model.get("name")) if winner != "automl" else None,
        "dataset": dataset.get("name"),
        "dataset_sha256": data.get("raw_sha256"),
        "split_sha256": {split: info.get("sha256") for split, info in (data.get("splits") or {}).items()},
        "metrics": selection.test(winner) or {},
    }


def sample_request(test_path, task: str = "single_label", size: int = SAMPLE_SIZE) -> dict:
    """A scoring request of the first ``size`` test texts (the task reads its split): the rollout's smoke test sends it."""
    return task_of(task).sample_request(test_path, size)


def select_and_register(
    model_registry: ModelRegistry,
    candidates: dict,
    test_csv,
    labels: list,
    select_cfg,
    data_info: dict,
    config: dict,
    sample_request: dict,
    out_dir: Path,
    *,
    prescored: Optional[dict] = None,
    sources: Optional[dict] = None,
    conda: Optional[dict] = None,
    commit: Optional[str] = None,
    val_csv=None,
):
    """The one select-and-register rule of both launchers.

    The production model of ``model_registry`` is downloaded and re-scored on this run's test split next to
    ``candidates`` (``{name: candidate folder}``); ``prescored`` adds candidates scored elsewhere
    (``{name: {"result": evaluate-style entry, "path": candidate folder}}``: AML AutoML's MLflow model packaged
    by the AutoML test step, which only AutoML's runtime can load, with the rule it chose on val). With ``val_csv``, each of ``candidates`` first gets its decision
    rule chosen on val (``select_cfg.decision_metric``, ``multiclass_rule``; written into its candidate.json,
    so the registered copy ships it); production keeps its own, and one whose labels differ from ``labels``
    is refused unless ``select_cfg.replace_incompatible``. :func:`finetune.selection.choose.choose` decides with
    ``select_cfg.metric`` and ``select_cfg.margin``; a winner is registered once per content with
    :func:`selection_tags`.
    The registration holds ``model_ref`` (the registered copy, referenced in place or downloaded to
    ``out_dir/model``: what a rollout deploys) when a version was registered.
    """
    out_dir = Path(out_dir)
    current = check_production_labels(
        model_registry.production(out_dir / "production"), list(labels), select_cfg.replace_incompatible
    )
    paths = dict(candidates)
    production_name = None
    if current is not None:
        production_name = PRODUCTION
        paths[PRODUCTION] = current.path
        print(f"re-scoring production model {current.name} version {current.version}", flush=True)
    task = data_info.get("task", "single_label")
    results = task_of(task).evaluate(
        paths,
        test_csv,
        list(labels),
        out_dir,
        val_path=val_csv,
        settings=DecisionSettings.of(select_cfg, data_info),
        keep_rule={PRODUCTION},
    )
    results.update({name: entry["result"] for name, entry in (prescored or {}).items()})
    selection = choose(results, select_cfg.metric, select_cfg.margin, production_name, task=task)
    if current is not None:
        selection.production_version = {"name": current.name, "version": str(current.version)}
    if selection.verdict is not Verdict.REGISTER:
        return SelectionOutcome(selection, current, Registration(verdict=selection.verdict, reason=selection.reason))
    winner = selection.winner
    tags = selection_tags(selection, data_info, config, (sources or {}).get(winner))
    with tempfile.TemporaryDirectory(prefix="finetune-register-") as scratch:
        # A prescored winner is a candidate folder too (AML AutoML's MLflow model behind a candidate.json): it
        # ships like any other, with score.py, the pyfunc model and its rule, so every version serves alike.
        source = prescored[winner]["path"] if winner in (prescored or {}) else paths[winner]
        folder = stage_artifact(
            Path(source), sample_request, Path(scratch) / "model", conda, card_facts(config, data_info, selection)
        )
        registered = register_folder(
            model_registry, folder, tags, commit, description=f"{winner}: best test {select_cfg.metric}"
        )
    model_dir = out_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    ref = model_registry.download(registered["version"], model_dir)
    registration = Registration(verdict=Verdict.REGISTER, model_ref=ref, sample_request=sample_request, **registered)
    return SelectionOutcome(selection, current, registration)
