"""The Azure ML launcher: a run plan as AML entities, exported as CLI v2 YAML and submitted with MLClient.

One module per AML concept, each a function of the plan (and of the prepared data where it needs it):
:mod:`.environment`, :mod:`.data`, :mod:`.command` (the training job), :mod:`.sweep`, :mod:`.automl`,
:mod:`.register`, :mod:`.deploy` (+ :mod:`.endpoint`, the rollout's AML endpoint), :mod:`.compute`,
:mod:`.pipeline`, :mod:`.export`, :mod:`.pricing`, :mod:`.workspace` / :mod:`.credentials` and
:mod:`.submit`; :mod:`.steps` is what the register, deploy and AutoML-test steps run on AML, and
:mod:`.checks` the AML rules of the plan check.

Importing this package imports no Azure code: ``python -m finetune --help`` and local plans stay fast.
"""

from __future__ import annotations

from pathlib import Path

from finetune.data import prepare
from finetune.launch.azureml import credentials, environment, export, pricing, submit, throughput, workspace
from finetune.launch.azureml.checks import check_azureml as check
from finetune.launch.azureml.checks import distinct_targets as separate
from finetune.launch.azureml.checks import resolve_limits as resolve
from finetune.launch.azureml.checks import with_task
from finetune.plan.fitting import budgeted
from finetune.plan.run_plan import RunPlan
from finetune.plan.view import estimate_lines

__all__ = ["auto_choices", "check", "resolve", "run", "separate"]


def auto_choices(cfg) -> dict:
    """``automl=auto``: AML AutoML NLP, which runs on GPU nodes only; ``endpoint=auto``: a managed endpoint."""
    return {
        "automl": "text_classification" if cfg.compute.gpus_per_node else "none",
        "endpoint": "managed",
        "budget": "none",
    }


def run(plan: RunPlan) -> None:
    """Prepare the data locally, write ``<run dir>/aml/``, print the plan and its cost bound; submit unless dry.

    Credentials are checked first, so a missing login fails in seconds, before any work. A dry run leaves
    only the export (which holds its own copy of the prepared data): the export is what it is asked for.
    """
    import logging
    import tempfile

    # azure-ai-ml announces its own experimental internals on every dump; nothing a user chose or can act on.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    client = None if plan.dry_run else connect(plan)
    if not plan.dry_run:
        plan.write()
    with tempfile.TemporaryDirectory(prefix="finetune-prepare-") as scratch:
        prepared = prepare(plan.dataset, Path(scratch) / "data")
        # The jobs are built for the task the data has (dataset.task=auto leaves it to the data).
        plan = with_task(plan, prepared.task)
        if budgeted(plan):
            # Fitted here, where the data's size is known; the export carries the fitted limits.
            plan = throughput.fit(plan, prepared.splits["train"]["rows"], prepared.splits["val"]["rows"])
        exported = export.write(plan, prepared)
    print(environment.describe(plan))
    print("\n".join(estimate_lines(plan)))
    print(pricing.summary(plan))
    print(exported.listing())
    if plan.dry_run:
        print(
            f"\ndry run: nothing submitted; submit with `az ml job create -f {exported.folder / 'pipeline.yml'}` "
            "or rerun without dry_run=true"
        )
        return

    submit.submit(plan, exported, client)


def connect(plan: RunPlan):
    """MLClient of the plan's workspace, with credentials verified (one line and exit 2 when there are none)."""
    return credentials.ml_client(workspace.resolve(plan.workspace))
