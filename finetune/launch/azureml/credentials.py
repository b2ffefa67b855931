"""Azure credentials for submitting, failing fast and in one line when there are none.

``DefaultAzureCredential`` as is would, on a laptop with no login, probe the instance metadata address
and fail only after a timeout with a long traceback. Here the managed identity is tried only where one
can exist (an Azure host announces its identity endpoint in the environment; AML compute does), the
chain is probed once with a short process timeout, and any failure becomes a :class:`UserError` that
says how to log in.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

from finetune.errors import UserError

MANAGEMENT_SCOPE = "https://management.azure.com/.default"
# Set on Azure hosts that have a managed identity endpoint (App Service/Functions, AML compute, Arc).
IDENTITY_ENDPOINT_VARS = ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")
LOGIN_HELP = (
    "no usable Azure credentials: run `az login` (and `az account set --subscription <id>`), or set "
    "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service principal, or run on an "
    "Azure machine with a managed identity; or check the plan offline with dry_run=true"
)
PROCESS_TIMEOUT_S = 10
NO_CREDENTIAL_MESSAGE = "DefaultAzureCredential failed to retrieve a token from the included credentials"


def has_identity_endpoint(environ: Optional[Mapping[str, str]] = None) -> bool:
    environ = os.environ if environ is None else environ
    return any(environ.get(name) for name in IDENTITY_ENDPOINT_VARS)


def credential(environ: Optional[Mapping[str, str]] = None):
    """A credential chain without the metadata-endpoint probe off Azure, verified with one token request."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import CredentialUnavailableError, DefaultAzureCredential

    chain = DefaultAzureCredential(
        exclude_managed_identity_credential=not has_identity_endpoint(environ),
        exclude_interactive_browser_credential=True,
        process_timeout=PROCESS_TIMEOUT_S,
    )
    # The chain logs every failed attempt as a warning block; the one-line error below replaces it.
    identity_log = logging.getLogger("azure.identity")
    level = identity_log.level
    identity_log.setLevel(logging.CRITICAL)
    try:
        chain.get_token(MANAGEMENT_SCOPE)
    except CredentialUnavailableError:
        raise UserError(LOGIN_HELP) from None
    except ClientAuthenticationError as error:
        reason = " ".join(str(error).split())
        # Every credential unavailable (nothing to log in with) reads so; else one of them was refused.
        if reason.startswith(NO_CREDENTIAL_MESSAGE):
            raise UserError(LOGIN_HELP) from None
        raise UserError(f"Azure refused the credentials ({reason[:200]}); {LOGIN_HELP}") from None
    finally:
        identity_log.setLevel(level)
    return chain


def ml_client(workspace, cred=None, **kwargs):
    """MLClient for a resolved :class:`~finetune.launch.azureml.workspace.Workspace`."""
    from azure.ai.ml import MLClient

    return MLClient(
        cred or credential(), workspace.subscription_id, workspace.resource_group, workspace.workspace_name, **kwargs
    )
