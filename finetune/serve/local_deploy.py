"""The local launcher's deploy step: a blue/green rollout (:func:`finetune.serve.rollout.rollout`) onto a
:class:`~finetune.serve.endpoint.LocalEndpoint`, one rollout per endpoint at a time, its processes stopped
afterwards unless the endpoint is meant to keep serving.
"""

from __future__ import annotations

from pathlib import Path

from finetune.serve.endpoint import LOOPBACK_HOSTS, LocalEndpoint
from finetune.serve.rollout import DeploymentResult, ModelRef, RolloutError, rollout
from finetune.system.locks import hold


def deploy_local(
    endpoint_cfg, state_dir: Path | str, model: ModelRef, sample_request: dict, keep_running: bool
) -> DeploymentResult:
    """The local launcher's deploy step: roll ``model`` out to the endpoint ``endpoint_cfg.name``.

    The endpoint lives under ``state_dir/<name>`` (``<output_root>/endpoints`` by convention). Its
    recorded deployments are started first, so traffic really moves from the old model to the new one,
    which goes in as ``blue`` or ``green``, whichever is free. ``python -m finetune`` passes
    ``keep_running=False``: the rollout and its smoke test run, then the processes stop (an endpoint that
    was already running stays up) and the state keeps the record, so ``python -m finetune.serve
    --endpoint <name>`` serves it again. Its ``to_dict()`` is the ``rollout`` section of summary.json
    (no key in it).
    """
    if endpoint_cfg.host not in LOOPBACK_HOSTS:
        print(
            f"warning: endpoint {endpoint_cfg.name} listens on {endpoint_cfg.host} (endpoint.allow_remote=true): "
            "its key travels over plain HTTP to anyone who can reach this machine",
            flush=True,
        )

    endpoint = LocalEndpoint.from_config(endpoint_cfg, state_dir)
    # One rollout at a time per endpoint: two would both pick the free colour.
    with hold(
        endpoint.dir / ".rollout.lock",
        owner="rollout",
        on_wait=lambda holder: print(f"waiting for {holder} to finish its rollout to {endpoint.name}", flush=True),
    ):
        was_running = endpoint.running()
        # What this rollout starts dies with this command unless the endpoint is meant to keep serving.
        endpoint.tied = not (keep_running or was_running)
        try:
            endpoint.start()
            result = rollout(
                endpoint,
                _free_colour(endpoint),
                model,
                sample_request,
                ramp=list(endpoint_cfg.ramp),
                max_error_rate=endpoint_cfg.max_error_rate,
                step_requests=endpoint_cfg.step_requests,
            )
        finally:
            if not (keep_running or was_running):
                endpoint.stop()
    serve_command = f"python -m finetune.serve --endpoint {endpoint.name} --endpoints-dir {state_dir}"
    return DeploymentResult(
        result,
        target="local",
        state_file=str(endpoint.state_file),
        running=bool(keep_running or was_running),
        serve_command=serve_command,
    )


def _free_colour(endpoint: LocalEndpoint) -> str:
    traffic = endpoint.traffic()
    for colour in ("blue", "green"):
        if colour not in traffic:
            return colour
    # Both exist only when deleting the old one failed last time: the one without traffic is that leftover.
    idle = [colour for colour in ("blue", "green") if traffic[colour] == 0]
    if not idle:
        raise RolloutError(f"endpoint {endpoint.name}: blue and green both take traffic; set it to one of them")
    endpoint.delete_deployment(idle[0])
    return idle[0]
