"""The MLflow run of one training: opened before the model loads, never allowed to break a started training.

With no tracking URI MLflow uses its environment, which on AML is the workspace. Under DDP only the first
process tracks (:class:`NullTracking` for the others): one MLflow run per training, not one per GPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

from finetune.config.spec import TrainArgs, logged_parameters
from finetune.errors import UserError

# AML sets these in every job (azureml-mlflow reads the same: azureml/mlflow/_common/constants.py RunEnvVars).
AML_RUN_VARIABLE = "AZUREML_RUN_ID"
# The MLflow run AML opened for the job (mlflow.start_run() without a run_id resumes it too).
AML_MLFLOW_RUN_VARIABLE = "MLFLOW_RUN_ID"


def on_azureml(environ=None) -> bool:
    """Whether this process is an AML job (its MLflow store is then the workspace, reached via azureml://)."""
    environ = os.environ if environ is None else environ
    return AML_RUN_VARIABLE in environ or environ.get("MLFLOW_TRACKING_URI", "").startswith("azureml:")


def start_tracking(args: TrainArgs, run_id: Optional[str] = None):
    """MLflow tracking for this training, or a clear decision when the store cannot be opened.

    On AML the sweep reads its objective from what training logs, so a job that cannot track is useless:
    it fails here, before any GPU time, with one line (``UserError``). Locally the metrics also land in
    result.json, so training goes on untracked after a warning.
    """
    try:
        return _Tracking(args, run_id)
    except Exception as error:  # noqa: BLE001 - any store failure is judged the same way
        where = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        if on_azureml():
            raise UserError(
                f"MLflow tracking at {where} cannot be used ({reason}); an AML job needs the "
                "azureml-mlflow plugin in its environment (finetune's job environments carry it)"
            ) from None
        print(
            f"warning: MLflow tracking at {where} is unavailable ({reason}); training goes on untracked, "
            "metrics are in result.json",
            file=sys.stderr,
        )
        return NullTracking()


class _Tracking:
    """MLflow logging that never breaks a started training: a failure is reported once, then logging stops."""

    def __init__(self, args: TrainArgs, run_id: Optional[str] = None):
        import logging

        import mlflow

        # Its INFO lines (creating a sqlite store's tables) would land between the progress bar's redraws.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.mlflow = mlflow
        self.broken = False
        if args.tracking_uri:
            mlflow.set_tracking_uri(args.tracking_uri)
        inside_aml = on_azureml()
        if not inside_aml:
            mlflow.set_experiment(args.experiment)
        active = mlflow.active_run()
        self.run = active or (self._start_aml_run(args) if inside_aml else self._start(args, run_id))
        self.owns_run = active is None
        self.run_id = self.run.info.run_id
        mlflow.log_params(
            {**logged_parameters(args), "model": args.model_id or args.model, "primary_metric": args.primary_metric}
        )

    def _start(self, args: TrainArgs, run_id: Optional[str]):
        """A resumed training continues the MLflow run it started (when the store still has it)."""
        if run_id:
            try:
                return self.mlflow.start_run(run_id=run_id)
            except self.mlflow.exceptions.MlflowException:
                pass
        tags = {**json.loads(args.tags or "{}"), "base_model": args.model_id or args.model}
        return self.mlflow.start_run(
            run_name=args.run_name, tags=tags, parent_run_id=args.parent_run_id, nested=args.parent_run_id is not None
        )

    def _start_aml_run(self, args: TrainArgs):
        """The run AML created for this job, in the job's experiment (named in ``MLFLOW_RUN_ID``).

        AML puts a job's run in the experiment the job was submitted to; the training script must not name
        one ("When submitting jobs using Azure Machine Learning CLI or SDK, you can set the experiment name
        using the property experiment_name of the job. You don't have to configure it in your training
        script": https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-cli-runs). MLflow
        refuses to resume the job's run under another active experiment, which would fail the job.
        """
        run = self.mlflow.start_run(run_id=os.environ.get(AML_MLFLOW_RUN_VARIABLE))
        self.mlflow.set_tags({**json.loads(args.tags or "{}"), "base_model": args.model_id or args.model})
        return run

    def _guarded(self, action, *args, **kwargs) -> None:
        if self.broken:
            return
        try:
            action(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a tracking outage must not cost the training
            self.broken = True
            print(
                f"warning: MLflow logging failed ({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
                "no more metrics are logged for this run, training goes on",
                file=sys.stderr,
            )

    def log(self, metrics: dict, step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if clean:
            # run_id explicitly: the telemetry thread has no active run (MLflow keeps the active run per thread).
            self._guarded(self.mlflow.log_metrics, clean, step=step, run_id=self.run_id)

    def tags(self, tags: dict) -> None:
        self._guarded(self.mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def finish(self, result: dict) -> None:
        self._guarded(self.mlflow.set_tags, {"status": result["status"], "epochs_run": result["epochs_run"]})
        if self.owns_run:
            self._guarded(self.mlflow.end_run, status="FAILED" if result["status"] == "failed" else "FINISHED")


class NullTracking:
    """Tracking for the processes after the first under DDP: one MLflow run per training, not one per GPU."""

    run_id = None

    def log(self, metrics: dict, step: int) -> None:
        pass

    def tags(self, tags: dict) -> None:
        pass

    def finish(self, result: dict) -> None:
        pass
