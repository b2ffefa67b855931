"""Endpoint names: AML's online endpoint rule, and the name each registered model's endpoint gets.

One endpoint per registered model (per dataset and task): a rollout deletes the deployments it replaces, so
two datasets sharing one endpoint would take each other's model off the air. Standard library only: every
plan is named while it is built.
"""

from __future__ import annotations

import hashlib
import re

# Online endpoint and deployment names (azure.ai.ml.constants.EndpointConfigurations; enforced by the
# SDK only when the request is built): 3-32 characters, a letter first, letters/digits/'-', no '-' last.
ENDPOINT_NAME = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
ENDPOINT_NAME_LENGTH = (3, 32)
DIGEST_LENGTH = 6
# A local endpoint's deployments and the endpoint itself (its name is a folder under the endpoints dir:
# one plain path component, nothing to climb with).
LOCAL_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{2,31}$")
LOCAL_ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{2,31}$")


def endpoint_name(model_name: str) -> str:
    """The endpoint of ``model_name`` within :data:`ENDPOINT_NAME` (a local endpoint's folder name meets it too).

    A name that does not fit is cut and ends with a short hash of the whole model name, so two long names
    sharing a prefix still get two endpoints, the same ones on every run.
    """
    shortest, longest = ENDPOINT_NAME_LENGTH
    name = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")
    if not name[:1].isalpha():
        name = f"ep-{name}".rstrip("-")
    if shortest <= len(name) <= longest:
        return name
    digest = hashlib.sha256(model_name.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]
    return f"{name[: longest - DIGEST_LENGTH - 1].rstrip('-')}-{digest}"
