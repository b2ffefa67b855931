"""Submission: cluster, data assets, pipeline job, in that order, through one MLClient.

Everything here talks to Azure; the entities come from the same builders the dry run exports, so what
is submitted is what ``dry_run=true`` wrote, with the local paths replaced by registered data assets.
Service errors end as one line (:class:`UserError`), not as the SDK's traceback.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.errors import UserError
from finetune.launch.azureml import compute, data, environment, pipeline, preflight
from finetune.launch.azureml.credentials import LOGIN_HELP
from finetune.launch.azureml.export import with_base_model

if TYPE_CHECKING:
    from finetune.launch.azureml.export import Exported
    from finetune.plan.run_plan import RunPlan

SUBMITTED = "submitted.json"


@contextmanager
def azure_errors(action: str):
    """Azure's errors as one line: what failed and the service's message."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    try:
        yield
    except ClientAuthenticationError as error:
        raise UserError(
            f"{action}: Azure refused the credentials ({' '.join(str(error).split())[:200]}); " + LOGIN_HELP
        ) from None
    except HttpResponseError as error:
        message = " ".join(str(error.message or error).split())[:400]
        raise UserError(f"{action}: Azure ML answered HTTP {error.status_code}: {message}") from None


def submit(plan: "RunPlan", exported: "Exported", ml_client, log=print):
    """Create what is missing, submit the pipeline, print where to follow it; returns the created job."""
    with azure_errors(f"compute cluster {plan.compute.cluster_name}"):
        compute.ensure(ml_client, plan, log)
    with azure_errors("pre-flight"):
        preflight.run(ml_client, plan, log)
    with azure_errors("data assets"):
        refs = data.register(ml_client, exported.specs, log)
    plan = with_base_model(plan, exported.folder, relative_to=None)
    envs = {role: environment.environment(spec) for role, spec in environment.definitions(plan).items()}
    job = pipeline.build(plan, refs, str(exported.code_dir), envs, str(exported.settings_path))
    with azure_errors("pipeline submission"):
        created = ml_client.jobs.create_or_update(job, experiment_name=plan.tracking.experiment)
    log(f"submitted pipeline job {created.name} (experiment {plan.tracking.experiment})")
    log(f"studio: {created.studio_url}")
    record = {
        "job": created.name,
        "studio_url": created.studio_url,
        "experiment": plan.tracking.experiment,
        "data": {"files": refs.files, "tables": refs.tables},
    }
    # Beside aml/, not in it: the studio URL names the workspace, and aml/ is the portable tree.
    Path(exported.folder).parent.joinpath(SUBMITTED).write_text(json.dumps(record, indent=2))
    if plan.submit.wait:
        with azure_errors(f"streaming job {created.name}"):
            ml_client.jobs.stream(created.name)
    return created
