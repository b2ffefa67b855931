"""The AML compute cluster of a plan, created when missing (``compute.create_if_missing``).

Idle nodes scale down to ``min_nodes`` (0 in every shipped config) after
``idle_seconds_before_scaledown``, so a finished pipeline stops costing money. The cluster gets a
system-assigned managed identity: the register and deploy steps authenticate with it, and it needs the
"AzureML Data Scientist" role on the workspace to register models and manage endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune.errors import UserError

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

ROLE_HINT = (
    "grant the cluster's managed identity the 'AzureML Data Scientist' role on the workspace, so that "
    "the register and deploy steps can use it"
)


STEPS_MAX_NODES = 2


def steps_compute(plan: "RunPlan") -> str:
    """Where the test/register/deploy steps run: the small CPU cluster, or the training cluster without one."""
    return plan.compute.steps_cluster_name or plan.compute.cluster_name


def cluster(plan: "RunPlan"):
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration

    compute = plan.compute
    return AmlCompute(
        name=compute.cluster_name,
        size=compute.vm_size,
        min_instances=compute.min_nodes,
        max_instances=compute.max_nodes,
        idle_time_before_scale_down=compute.idle_seconds_before_scaledown,
        tier="low_priority" if compute.low_priority else "dedicated",
        identity=IdentityConfiguration(type="system_assigned"),
        description=f"finetune compute={compute.name}",
    )


def steps_cluster(plan: "RunPlan"):
    """The steps' CPU cluster (dedicated: a preempted register or deploy step would redo its service calls)."""
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration

    compute = plan.compute
    return AmlCompute(
        name=compute.steps_cluster_name,
        size=compute.steps_vm_size,
        min_instances=0,
        max_instances=STEPS_MAX_NODES,
        idle_time_before_scale_down=compute.idle_seconds_before_scaledown,
        tier="dedicated",
        identity=IdentityConfiguration(type="system_assigned"),
        description=f"finetune steps of compute={compute.name}",
    )


def ensure(ml_client, plan: "RunPlan", log=print) -> None:
    """Use the named clusters (training, steps) if they exist, else create them (or explain how to)."""
    wanted = [cluster(plan)]
    if plan.compute.steps_cluster_name:
        wanted.append(steps_cluster(plan))
    for entity in wanted:
        _ensure_one(ml_client, plan, entity, log)


def _ensure_one(ml_client, plan: "RunPlan", entity, log) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        existing = ml_client.compute.get(entity.name)
    except ResourceNotFoundError:
        if not plan.compute.create_if_missing:
            raise UserError(
                f"compute cluster {entity.name} does not exist in the workspace; create it or "
                "set compute.create_if_missing=true"
            ) from None
        log(f"creating compute cluster {entity.name} ({entity.size}, 0..{entity.max_instances} nodes); " + ROLE_HINT)
        ml_client.compute.begin_create_or_update(entity).result()
        return
    size = getattr(existing, "size", None)
    if size and size.lower() != (entity.size or "").lower():
        log(f"note: cluster {entity.name} exists with VM size {size}, not {entity.size}; it is used as is")
