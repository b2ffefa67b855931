"""Serving: the scoring script, a local endpoint, and the one rollout algorithm.

- :mod:`finetune.serve.score`: the AML entry script (``init()``/``run()``), self-contained; the AML
  launcher copies :data:`SCORE_SCRIPT` next to the registered model.
- :mod:`finetune.serve.endpoint`: :class:`LocalEndpoint` (azmlinfsrv deployments behind a keyed
  router on 127.0.0.1) and :func:`deploy_local`, the local launcher's deploy step.
- :mod:`finetune.serve.rollout`: :func:`rollout` over the ``Endpoint`` protocol, :class:`ModelRef`.
- ``python -m finetune.serve``: serve the production model (or a folder) in the foreground.

Importing this package loads the standard library only (torch and friends load in score.py's init()).
"""

from finetune.serve.endpoint import LocalEndpoint
from finetune.serve.entry_scripts import SCORE_SCRIPT
from finetune.serve.local_deploy import deploy_local
from finetune.serve.rollout import DeploymentResult, InvokeError, ModelRef, RolloutError, RolloutResult, rollout

__all__ = [
    "SCORE_SCRIPT",
    "DeploymentResult",
    "InvokeError",
    "LocalEndpoint",
    "ModelRef",
    "RolloutError",
    "RolloutResult",
    "deploy_local",
    "rollout",
]
