"""Submit-time pre-flight: what would otherwise fail only at the end, after hours of GPU, checked first.

- The steps' cluster has a managed identity: the register and deploy steps authenticate as it
  (``ManagedIdentityConfiguration`` on the step; AML passes its client id as ``DEFAULT_IDENTITY_CLIENT_ID``).
- That identity holds a role on the workspace that may register models and manage endpoints ("AzureML Data
  Scientist", Contributor or Owner), read from Azure RBAC's role assignments at the workspace scope
  (``GET <workspace id>/providers/Microsoft.Authorization/roleAssignments?$filter=principalId eq '<id>'``,
  https://learn.microsoft.com/rest/api/authorization/role-assignments/list-for-scope). Not being allowed to
  read them is a failure too: the submitter then cannot know, and neither can this check.
- The endpoint name (unique per Azure region) is ours or free: an existing endpoint must carry the tag
  ``managed_by=finetune``; a free name is claimed now by creating the empty endpoint (no deployment, so no
  cost), so the deploy step cannot find it taken hours later.

Each failure is one line (:class:`UserError`) raised before the pipeline is submitted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from finetune.errors import UserError
from finetune.launch.azureml.compute import steps_compute

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

# Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
ALLOWED_ROLES = {
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
}
ROLE_API_VERSION = "2022-04-01"
MANAGED_TAG = ("managed_by", "finetune")


def workspace_id(ml_client) -> str:
    return (
        f"/subscriptions/{ml_client.subscription_id}/resourceGroups/{ml_client.resource_group_name}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{ml_client.workspace_name}"
    )


def role_assignments(ml_client, principal_id: str) -> List[dict]:
    """Role assignments of ``principal_id`` that apply at the workspace (inherited ones included)."""
    import requests

    base = str(ml_client._base_url).rstrip("/")  # the cloud's resource manager endpoint
    token = ml_client._credential.get_token("https://management.azure.com/.default").token
    url = f"{base}{workspace_id(ml_client)}/providers/Microsoft.Authorization/roleAssignments"
    response = requests.get(
        url,
        params={"api-version": ROLE_API_VERSION, "$filter": f"principalId eq '{principal_id}'"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    if response.status_code in (401, 403):
        raise UserError(
            f"pre-flight: cannot read role assignments on the workspace (HTTP {response.status_code}); "
            "the submitter needs Microsoft.Authorization/roleAssignments/read (e.g. Reader) to confirm "
            "that the steps' identity may register and deploy"
        )
    if response.status_code != 200:
        raise UserError(f"pre-flight: role assignments answered HTTP {response.status_code}: {response.text[:200]}")
    return response.json().get("value", [])


def check_identity(ml_client, plan: "RunPlan", log=print) -> str:
    """The principal id of the steps' cluster identity, after checking its role on the workspace."""
    name = steps_compute(plan)
    cluster = ml_client.compute.get(name)
    identity = getattr(cluster, "identity", None)
    principal = getattr(identity, "principal_id", None)
    if not principal:
        raise UserError(
            f"pre-flight: compute cluster {name} has no managed identity, and the register and deploy "
            f"steps authenticate as it; `az ml compute update -n {name} --identity-type SystemAssigned`, "
            "then grant it the 'AzureML Data Scientist' role on the workspace"
        )
    roles = {
        assignment.get("properties", {}).get("roleDefinitionId", "").rsplit("/", 1)[-1]
        for assignment in role_assignments(ml_client, principal)
    }
    held = [ALLOWED_ROLES[role] for role in roles if role in ALLOWED_ROLES]
    if not held:
        raise UserError(
            f"pre-flight: the managed identity of cluster {name} (principal {principal}) has no role on "
            "the workspace that may register models and deploy; `az role assignment create --assignee-object-id "
            f"{principal} --assignee-principal-type ServicePrincipal --role 'AzureML Data Scientist' "
            f"--scope {workspace_id(ml_client)}`"
        )
    log(f"pre-flight: cluster {name} identity holds {', '.join(sorted(held))} on the workspace")
    return principal


def claim_endpoint(ml_client, plan: "RunPlan", log=print) -> Optional[str]:
    """The endpoint exists and is ours, or it is created now (empty) so that its name is ours."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    from finetune.launch.azureml.deploy import endpoint_entity

    if plan.endpoint.target != "managed":
        return None
    name = plan.endpoint.name
    try:
        existing = ml_client.online_endpoints.get(name)
    except ResourceNotFoundError:
        existing = None
    if existing is not None:
        if (existing.tags or {}).get(MANAGED_TAG[0]) != MANAGED_TAG[1]:
            raise UserError(
                f"pre-flight: endpoint {name} exists in this workspace and was not made by finetune "
                f"(no tag {MANAGED_TAG[0]}={MANAGED_TAG[1]}); set endpoint.name to another name"
            )
        log(f"pre-flight: endpoint {name} exists and is ours")
        return name
    try:
        ml_client.online_endpoints.begin_create_or_update(endpoint_entity(plan.endpoint)).result()
    except HttpResponseError as error:
        message = " ".join(str(error.message or error).split())[:300]
        raise UserError(
            f"pre-flight: endpoint name {name} cannot be claimed ({message}); endpoint names are unique "
            "per Azure region: set endpoint.name to another name"
        ) from None
    log(f"pre-flight: endpoint {name} created (empty) so that its name is ours")
    return name


def run(ml_client, plan: "RunPlan", log=print) -> dict:
    return {"principal_id": check_identity(ml_client, plan, log), "endpoint": claim_endpoint(ml_client, plan, log)}
