"""The deploy step and the managed online endpoint / deployment entities it rolls out.

The step (``python -m finetune.launch.azureml.runtime.steps deploy``) runs on AML with the compute's managed
identity and calls :func:`finetune.serve.rollout.rollout`, the local launcher's algorithm, with an
:class:`~finetune.launch.azureml.runtime.endpoint.AmlEndpoint`: new deployment with the registered model and the
project's ``score.py`` -> invoke it directly with the sample request -> traffic to 100% -> delete the old
deployments; on failure the old traffic stays and the new deployment is deleted.

The entities are pure functions of the endpoint config, so the exported YAML and the step build the same
deployment.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from finetune.launch.azureml.compute import steps_compute
from finetune.launch.azureml.runtime.step_args import DeployArgs, command_line
from finetune.registry.packaging import model_environment as own_environment
from finetune.serve.score import find_candidate, read_candidate

if TYPE_CHECKING:
    from finetune.config.schema import EndpointConfig
    from finetune.plan.run_plan import RunPlan

OUTPUT = "rollout"
SCORING_SCRIPT = "score.py"
# The image under a model that brings its own conda environment (an AML AutoML NLP model): AML's plain CPU
# image, as in Microsoft's manual deployment of an AutoML model (an openmpi Ubuntu image + the model's conda
# file, https://learn.microsoft.com/azure/machine-learning/how-to-deploy-automl-endpoint). The minimal
# inference images are built for the project's serving spec, not for the Python the model's conda.yaml pins.
MODEL_ENVIRONMENT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"

# Sizing a CPU deployment for a model (endpoint.instance_type=auto, endpoint.request_timeout_ms=0).
# Measured: score.py with the packaged MiniLM-L6, 64 reviews of <=128 tokens, 2 threads on a shared 2-core
# machine: 5.0 s, i.e. ~160 ms x vCPU per item (pessimistic: the machine was shared). Other encoders scale
# with their layers x width^2 relative to MiniLM-L6 (6 x 384).
MS_PER_ITEM_VCPU = 160
RELATIVE_COST = (("large", 28.0), ("distil", 4.0), ("minilm", 1.0), ("", 8.0))  # first substring match; base = 8
# CPU instance types a deployment is sized among (vCPUs), smallest first; F-series: compute-optimised.
INSTANCE_VCPUS = (("Standard_F4s_v2", 4), ("Standard_F8s_v2", 8), ("Standard_F16s_v2", 16))
TARGET_LATENCY_MS = 15_000  # the largest request should answer within this on the chosen instance
MIN_TIMEOUT_MS = 10_000


def request_cost_ms(model_name: str, items: int) -> float:
    """Estimated vCPU-milliseconds of one request of ``items`` texts for a model config name."""
    factor = next(cost for key, cost in RELATIVE_COST if key in model_name.lower())
    return items * MS_PER_ITEM_VCPU * factor


def sized(config: "EndpointConfig", model_name: str) -> "EndpointConfig":
    """``config`` with ``instance_type: auto`` and ``request_timeout_ms: 0`` resolved for ``model_name``:
    the smallest instance on which the largest request (``max_batch_items``) takes at most
    TARGET_LATENCY_MS, and a timeout of three times that estimate (AML caps it at 180 s)."""
    import dataclasses

    cost = request_cost_ms(model_name, config.max_batch_items)
    instance = config.instance_type
    if instance == "auto":
        instance = next(
            (name for name, vcpus in INSTANCE_VCPUS if cost / vcpus <= TARGET_LATENCY_MS), INSTANCE_VCPUS[-1][0]
        )
    vcpus = dict(INSTANCE_VCPUS).get(instance)
    timeout = config.request_timeout_ms
    if timeout == 0:
        estimate = cost / vcpus if vcpus else TARGET_LATENCY_MS
        timeout = int(min(180_000, max(MIN_TIMEOUT_MS, 3 * estimate)))
    return dataclasses.replace(config, instance_type=instance, request_timeout_ms=timeout)


def model_environment(model_dir: Path) -> Optional[dict]:
    """The deployment environment of a registered version that brings its own (the MLflow model it wraps
    names one: :func:`finetune.registry.packaging.model_environment`), as an environment definition; None otherwise."""
    folder = find_candidate(Path(model_dir))
    conda = own_environment(folder, read_candidate(folder))
    if conda is None:
        return None
    return {
        "image": MODEL_ENVIRONMENT_IMAGE,
        "conda_file": conda,
        "description": "finetune serving: score.py in the environment of the AutoML model it serves",
    }


def endpoint_entity(config: "EndpointConfig"):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(
        name=config.name,
        auth_mode=config.auth_mode,
        description="text classifier served by finetune's score.py",
        tags={"managed_by": "finetune"},
    )


def deployment_name(version: str, now: Optional[_dt.datetime] = None) -> str:
    """``v<model version>-<MMDDhhmmss>``: which model it serves, unique per rollout, <= 32 characters."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"v{version}-{now:%m%d%H%M%S}"


def deployment_entity(
    config: "EndpointConfig", name: str, model: str, environment, code_dir: str, model_name: str, model_version: str
):
    """A managed deployment of ``model`` (``azureml:<name>:<version>``) with the project's scoring script.

    Probe delays come from the config and must cover loading a transformer on the instance type; AML's
    default (10 s) restarts a container that is still loading a base-size model.
    """
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

    def probe(initial_delay: int) -> ProbeSettings:
        return ProbeSettings(
            initial_delay=initial_delay, period=config.probe_period_s, failure_threshold=config.probe_failure_threshold
        )

    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=config.name,
        model=model,
        environment=environment,
        code_configuration=CodeConfiguration(code=code_dir, scoring_script=SCORING_SCRIPT),
        instance_type=config.instance_type,
        instance_count=config.instance_count,
        request_settings=OnlineRequestSettings(
            request_timeout_ms=config.request_timeout_ms,
            max_concurrent_requests_per_instance=config.max_concurrent_requests_per_instance,
        ),
        liveness_probe=probe(config.liveness_initial_delay_s),
        readiness_probe=probe(config.readiness_initial_delay_s),
        environment_variables={
            "FINETUNE_MODEL_NAME": model_name,
            "FINETUNE_MODEL_VERSION": str(model_version),
            "FINETUNE_MAX_ITEMS": str(config.max_batch_items),
            "FINETUNE_MAX_BODY_BYTES": str(config.max_body_bytes),
        },
        tags={"model": f"{model_name}:{model_version}"},
    )


def step_args() -> DeployArgs:
    return DeployArgs(
        model_ref="${{inputs.model_ref}}", settings="${{inputs.settings}}", output_dir="${{outputs.%s}}" % OUTPUT
    )


def deploy_step(plan: "RunPlan", code: str, environment):
    from azure.ai.ml import Input, Output, command
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    return command(
        name="deploy",
        display_name=f"roll out to endpoint {plan.endpoint.name}",
        description="safe rollout of the registered model (finetune.serve.rollout with an AML endpoint)",
        command=command_line(step_args()),
        code=code,
        environment=environment,
        compute=steps_compute(plan),
        inputs={"model_ref": Input(type="uri_folder"), "settings": Input(type="uri_file")},
        outputs={OUTPUT: Output(type="uri_folder")},
        identity=ManagedIdentityConfiguration(),
        is_deterministic=False,
    )
