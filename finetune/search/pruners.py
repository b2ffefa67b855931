"""AML's policies as optuna pruners: the study's trials become curves, :func:`policies.should_stop` decides.

The pruner runs inside each trial's training process (through :class:`~finetune.search.reporting.TrialReporter`)
and reads every trial from the shared storage, so concurrent trials see each other's reports as AML's
service does. A trial's curve is its intermediate values ordered by step: the N-th value is interval N.
"""

from __future__ import annotations

from typing import List

import optuna

from finetune.config.schema import PolicyConfig
from finetune.search.policies import should_stop

# User attribute of a retry: the number of the trial that was running when its sweep process died. The
# retry replaces that trial, whose partial curve would otherwise count the same configuration twice.
RETRY_OF = "retry_of"


def curve(trial: optuna.trial.FrozenTrial) -> List[float]:
    """A trial's reported values in report order (interval 1 first)."""
    return [value for _, value in sorted(trial.intermediate_values.items())]


def replaced(trials) -> set:
    """Numbers of the trials that a retry replaces."""
    return {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}


class AmlPolicyPruner(optuna.pruners.BasePruner):
    """Prunes exactly when AML's Bandit / median stopping / truncation selection rule would cancel the run."""

    def __init__(self, policy: PolicyConfig, goal: str):
        self.policy = policy
        self.goal = goal

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        trials = study.get_trials(deepcopy=False)
        skip = replaced(trials)
        curves, finished = {}, set()
        for other in trials:
            if other.number in skip or other.state == optuna.trial.TrialState.WAITING:
                continue
            curves[other.number] = curve(other)
            if other.state.is_finished():
                finished.add(other.number)
        curves[trial.number] = curve(trial)  # the caller's copy holds the report just made
        return should_stop(self.policy, self.goal, curves, trial.number, finished)


def build_pruner(policy: PolicyConfig, goal: str) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner() if policy.type == "none" else AmlPolicyPruner(policy, goal)
