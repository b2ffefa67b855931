"""MLflow as people browse it: one parent run per invocation, training runs nested under it, tags to filter by.

The local launcher opens the pipeline run (named after the plan, tagged with the dataset and its hash, the
base model id, the launcher and the git commit) and hands its id to every ``python -m finetune.train``
process (``--parent-run-id``, ``--tags``, ``--model-id``), which nests its run under it. Selection's test
metrics go on the pipeline run, and the registered version is logged from it, so the version links to a run
that holds the metrics it was chosen by. Rerunning with the same ``run_name`` continues the same pipeline run.
"""

from __future__ import annotations

import json
import math
import time
from typing import Optional

from finetune.registry.model_registry import _client, experiment_id, git_commit

PLAN_TAG = "finetune.plan.run_plan"
ROLE_TAG = "finetune.role"


def model_id(model) -> str:
    """The base model as people name it (hub id or config name), never a local folder of a virtualenv."""
    return model.hub_id or model.name


def run_tags(plan, data) -> dict:
    """Tags every run of this invocation carries: what data, which base model, which plan and code."""
    tags = {
        PLAN_TAG: plan.name,
        "finetune.launcher": plan.launcher,
        "dataset.name": plan.dataset.name,
        "dataset.raw_sha256": data.raw_sha256,
        "base_model": model_id(plan.model),
    }
    tags.update({f"dataset.{split}_sha256": info["sha256"] for split, info in data.splits.items()})
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def start_pipeline_run(plan, tags: dict) -> str:
    """The id of this plan's pipeline run: the one an interrupted invocation left, or a new one."""
    client = _client(plan.tracking.uri)
    experiment = experiment_id(plan.tracking.uri, plan.tracking.experiment)
    earlier = client.search_runs(
        [experiment], f"tags.`{PLAN_TAG}` = '{plan.name}' and tags.`{ROLE_TAG}` = 'pipeline'", max_results=1
    )
    if earlier:
        run_id = earlier[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment, run_name=plan.name, tags={**tags, ROLE_TAG: "pipeline"}).info.run_id
    return run_id


def child_args(parent_run_id: str, tags: dict, model: str) -> list[str]:
    """Arguments of ``python -m finetune.train`` that nest its run under the pipeline run."""
    return ["--parent-run-id", parent_run_id, "--tags", json.dumps(tags), "--model-id", model]


def log_selection(tracking_uri: str, run_id: str, selection: dict) -> None:
    """Every candidate's test metrics on the pipeline run (``test_<metric>`` for the chosen one)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for row in selection.get("table", []):
        for name, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics.append(Metric(f"test_{name}.{row['candidate']}", float(value), now, 0))
                if row["candidate"] == selection.get("winner"):
                    metrics.append(Metric(f"test_{name}", float(value), now, 0))
    client = _client(tracking_uri)
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "selection.winner", selection.get("winner"))


def end_pipeline_run(tracking_uri: str, run_id: Optional[str], status: str) -> None:
    if run_id:
        _client(tracking_uri).set_terminated(run_id, status=status)


def ui_command(tracking_uri: str) -> str:
    """How to browse this store: ``mlflow ui`` needs the full mlflow package (the ``[ui]`` extra)."""
    # One worker: a person browsing needs no more, and four take a minute to start on a small machine.
    return f"mlflow ui --backend-store-uri {tracking_uri} --workers 1"
