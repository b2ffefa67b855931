"""The optuna study behind a local sweep: opened (or resumed) with a fingerprint that a resume must match, its
sampler reseeded past the trials already run, and the trials a dead sweep left RUNNING failed and enqueued again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import List

import optuna
from optuna.trial import TrialState

from finetune.errors import UserError
from finetune.plan.run_plan import RunPlan
from finetune.search.pruners import RETRY_OF, build_pruner, replaced
from finetune.search.reporting import open_storage
from finetune.search.space import latent_of_value


def study_fingerprint(plan: RunPlan) -> dict:
    """What makes two sweeps the same sweep (limits may change between resumes; these may not)."""
    search = plan.search
    return json.loads(
        json.dumps(
            {
                "sampling": search.sampling,
                "seed": search.seed,
                "space": search.space,
                "policy": dataclasses.asdict(search.policy),
                "primary_metric": search.primary_metric,
                "goal": search.goal,
                "model": plan.model.path or plan.model.hub_id,
            },
            sort_keys=True,
        )
    )


def open_study(plan: RunPlan, storage_url: str, sweep_dir: Path):
    search = plan.search
    storage = open_storage(storage_url)
    try:
        study_id = storage.get_study_id_from_name(plan.name)
        earlier = len(storage.get_all_trials(study_id, deepcopy=False))
        recorded = storage.get_study_user_attrs(study_id).get("fingerprint")
    except KeyError:
        earlier, recorded = 0, None
    fingerprint = study_fingerprint(plan)
    if recorded is not None and recorded != fingerprint:
        changed = sorted(k for k in fingerprint if fingerprint[k] != recorded.get(k))
        raise UserError(
            f"{sweep_dir}: holds a sweep with another {', '.join(changed)}; resume it with the same "
            "search config, or use another run_name (or delete that folder) for a new sweep"
        )
    study = optuna.create_study(
        storage=storage,
        study_name=plan.name,
        direction=search.goal,
        sampler=sampler(plan, search.seed + earlier),
        pruner=build_pruner(search.policy, search.goal),
        load_if_exists=True,
    )
    if recorded is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("policy", dataclasses.asdict(search.policy))
        study.set_user_attr("primary_metric", search.primary_metric)
        study.set_user_attr("goal", search.goal)
    return study


def sampler(plan: RunPlan, seed: int):
    search = plan.search
    if search.sampling == "grid":
        return AskTellGridSampler({name: list(dist["values"]) for name, dist in search.space.items()}, seed=seed)
    if search.sampling == "bayesian":
        # TPE samples at random until n_startup_trials finished; optuna's 10 would make a small sweep random.
        startup = max(2, min(10, search.limits.max_total_trials // 2))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """optuna's GridSampler calls ``study.stop()`` after the last grid point, which raises outside
    ``study.optimize``; the runner caps a grid sweep at the grid's size itself."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def counted(study) -> list:
    """Finished trials that count against max_total_trials (an interrupted trial's retry counts instead)."""
    trials = study.get_trials(deepcopy=False)
    skip = replaced(trials)
    return [t for t in trials if t.state.is_finished() and t.number not in skip]


def retry_interrupted(study, sweep_dir: Path) -> List[int]:
    """Trials RUNNING in storage belonged to a sweep process that died: fail them, enqueue their params.

    The retry trains from scratch in its own folder (its reports must start at interval 1), so the
    interrupted trial's checkpoints and model are only disk to free; its log stays.
    """
    interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in interrupted:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        for folder in ("checkpoints", "model"):
            shutil.rmtree(trial_dir(sweep_dir, trial.number) / folder, ignore_errors=True)
    return [t.number for t in interrupted]


def enqueue_configured(study, plan: RunPlan) -> dict:
    """Make a fresh budgeted sweep's first trial the model config's own settings, where the space can draw them.

    A budget too small for a sweep trains once at these settings; starting a larger budget's sweep from the
    same point means more budget adds trials to that training instead of replacing it with random samples
    (AML's random sampling has no such seed point, so unbudgeted sweeps stay as AML runs them). Dimensions
    whose configured value the space cannot draw are sampled. Returns the enqueued latent values.
    """
    if study.get_trials(deepcopy=False):
        return {}
    configured = {name: plan.model.name if name == "model" else getattr(plan.model, name) for name in plan.search.space}
    fixed = {
        name: latent
        for name, value in configured.items()
        if (latent := latent_of_value(name, plan.search.space[name], value)) is not None
    }
    if fixed:
        study.enqueue_trial(fixed)
    return fixed


def trial_dir(sweep_dir: Path, number: int) -> Path:
    return sweep_dir / f"trial-{number:03d}"
