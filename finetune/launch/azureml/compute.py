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
    from finetune.plan import RunPlan

ROLE_HINT = ("grant the cluster's managed identity the 'AzureML Data Scientist' role on the workspace, so that "
             "the register and deploy steps can use it")


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


def ensure(ml_client, plan: "RunPlan", log=print) -> None:
    """Use the named cluster if it exists, else create it (or explain how to)."""
    from azure.core.exceptions import ResourceNotFoundError

    compute = plan.compute
    try:
        existing = ml_client.compute.get(compute.cluster_name)
    except ResourceNotFoundError:
        if not compute.create_if_missing:
            raise UserError(f"compute cluster {compute.cluster_name} does not exist in the workspace; create it or "
                            "set compute.create_if_missing=true") from None
        log(f"creating compute cluster {compute.cluster_name} ({compute.vm_size}, 0..{compute.max_nodes} nodes); "
            + ROLE_HINT)
        ml_client.compute.begin_create_or_update(cluster(plan)).result()
        return
    size = getattr(existing, "size", None)
    if size and size.lower() != (compute.vm_size or "").lower():
        log(f"note: cluster {compute.cluster_name} exists with VM size {size}, not {compute.vm_size}; it is used as is")
