"""AmlEndpoint: the rollout's Endpoint protocol over an AML managed online endpoint.

Implements what :func:`finetune.serve.rollout.rollout` calls (``traffic``, ``create_deployment``,
``invoke``, ``set_traffic``, ``delete_deployment``) with ``MLClient.online_endpoints`` and
``MLClient.online_deployments``, so AML rollouts run the very algorithm the local endpoint runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

from finetune.serve.rollout import InvokeError

if TYPE_CHECKING:
    from finetune.config.schema import EndpointConfig
    from finetune.serve.rollout import ModelRef


class AmlEndpoint:
    """One managed online endpoint; deployments get ``environment`` and the scoring code in ``code_dir``."""

    def __init__(self, ml_client, config: "EndpointConfig", environment, code_dir: str):
        self.ml_client = ml_client
        self.config = config
        self.name = config.name
        self.environment = environment
        self.code_dir = code_dir

    def ensure(self) -> None:
        """Create the endpoint (no deployments, no traffic) when it does not exist yet."""
        from azure.core.exceptions import ResourceNotFoundError

        from finetune.launch.azureml.deploy import endpoint_entity

        try:
            self.ml_client.online_endpoints.get(self.name)
        except ResourceNotFoundError:
            self.ml_client.online_endpoints.begin_create_or_update(endpoint_entity(self.config)).result()

    @property
    def scoring_uri(self) -> Optional[str]:
        return self.ml_client.online_endpoints.get(self.name).scoring_uri

    def traffic(self) -> Dict[str, int]:
        """Every deployment of the endpoint with its percentage (0 for those taking none)."""
        endpoint = self.ml_client.online_endpoints.get(self.name)
        weights = {name: int(percent) for name, percent in (endpoint.traffic or {}).items()}
        for deployment in self.ml_client.online_deployments.list(endpoint_name=self.name):
            weights.setdefault(deployment.name, 0)
        return weights

    def create_deployment(self, deployment: str, model: "ModelRef") -> None:
        from finetune.launch.azureml.deploy import deployment_entity

        entity = deployment_entity(
            self.config,
            deployment,
            f"azureml:{model.name}:{model.version}",
            self.environment,
            self.code_dir,
            model.name,
            str(model.version),
        )
        self.ml_client.online_deployments.begin_create_or_update(entity).result()

    def invoke(self, body: dict, deployment: Optional[str] = None) -> dict:
        """POST ``body`` to the scoring URI (to ``deployment`` directly when named); the parsed answer."""
        from azure.ai.ml.constants._endpoint import EndpointInvokeFields
        from azure.core.exceptions import HttpResponseError

        # azure-ai-ml 1.35.2 adds the deployment header to a module-level dict that it reuses for every later
        # call, so a call meant for the traffic split would still go to the last deployment named.
        EndpointInvokeFields.DEFAULT_HEADER.pop(EndpointInvokeFields.MODEL_DEPLOYMENT, None)
        with tempfile.TemporaryDirectory(prefix="finetune-invoke-") as folder:
            request = Path(folder) / "request.json"
            request.write_text(json.dumps(body), encoding="utf-8")
            try:
                text = self.ml_client.online_endpoints.invoke(
                    endpoint_name=self.name, request_file=str(request), deployment_name=deployment
                )
            except HttpResponseError as error:
                status = getattr(error, "status_code", None) or 0
                raise InvokeError(
                    f"{self.name}/{deployment or '(traffic)'} answered HTTP {status}: "
                    f"{' '.join(str(error.message or error).split())[:300]}",
                    status,
                ) from error
        try:
            return json.loads(text)
        except ValueError:
            raise InvokeError(
                f"{self.name}/{deployment or '(traffic)'} answered non-JSON: {text[:200]!r}", 200, text
            ) from None

    def set_traffic(self, weights: Dict[str, int]) -> None:
        endpoint = self.ml_client.online_endpoints.get(self.name)
        endpoint.traffic = {name: int(percent) for name, percent in weights.items()}
        self.ml_client.online_endpoints.begin_create_or_update(endpoint).result()

    def delete_deployment(self, deployment: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.ml_client.online_deployments.begin_delete(name=deployment, endpoint_name=self.name).result()
        except ResourceNotFoundError:
            pass
