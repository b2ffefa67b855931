"""The training side of a sweep: a trial process reports its primary metric and learns whether to stop.

``python -m finetune.train --trial-storage URL --study-name NAME --trial-number N --primary-metric M``
builds a :class:`TrialReporter` and calls :meth:`TrialReporter.report` after every evaluation. The
policy is read from the study itself (the runner stores it there), so a trial needs no policy
arguments and every trial of a sweep is judged by the same rule.
"""

from __future__ import annotations

from finetune.config.schema import PolicyConfig

# Seconds a process waits for another one's sqlite write lock (concurrent trials report at once).
SQLITE_LOCK_TIMEOUT_S = 60


def open_storage(url: str):
    """Optuna storage for `url`; sqlite waits for locks instead of failing a report under concurrency."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


class TrialReporter:
    """Reports one trial's primary metric to its study and applies the sweep's early-termination policy."""

    def __init__(self, storage_url: str, study_name: str, trial_number: int, primary_metric: str, goal: str):
        import optuna

        from finetune.search.pruners import build_pruner

        storage = open_storage(storage_url)
        study_id = storage.get_study_id_from_name(study_name)
        attrs = storage.get_study_user_attrs(study_id)
        if (attrs["primary_metric"], attrs["goal"]) != (primary_metric, goal):
            raise ValueError(
                f"trial {trial_number} reports {primary_metric} ({goal}) but study {study_name} "
                f"optimises {attrs['primary_metric']} ({attrs['goal']})"
            )
        study = optuna.load_study(
            study_name=study_name, storage=storage, pruner=build_pruner(PolicyConfig(**attrs["policy"]), goal)
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.reports = 0

    def report(self, value: float, step: int) -> bool:
        """Record `value` at training `step`; True when the policy stops the trial at this interval.

        The interval reached is kept on the trial (user attributes ``stopped_at_interval`` and
        ``stopped_at_step``) so the sweep records where the policy acted.
        """
        self.trial.report(float(value), int(step))
        self.reports += 1
        if not self.trial.should_prune():
            return False
        self.trial.set_user_attr("stopped_at_interval", self.reports)
        self.trial.set_user_attr("stopped_at_step", int(step))
        return True
