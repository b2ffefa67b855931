"""AmlRegistry: the :class:`finetune.registry.model_registry.ModelRegistry` protocol over an AML workspace's model registry.

The register step hands it to :func:`finetune.registry.registration.select_and_register`, the rule the local launcher
runs over MLflow's registry: same re-scoring of production, same margin, same tags, same idempotency.

AML has no model aliases; a version's ``stage`` plays the part of MLflow's ``production`` alias
(``Model(stage=...)`` and ``ml_client.models.list(name, stage=...)`` in azure-ai-ml). The deploy step calls
:meth:`promote` after a successful rollout, so ``Production`` always names the version that serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from finetune.plan.results import Promotion
from finetune.serve.rollout import ModelRef

PRODUCTION_STAGE = "Production"
ARCHIVED_STAGE = "Archived"


class AmlRegistry:
    def __init__(self, ml_client, name: str, model_type: str = "custom_model"):
        self.ml_client = ml_client
        self.name = name
        self.model_type = model_type

    def _versions(self, stage: Optional[str] = None) -> list:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return list(self.ml_client.models.list(name=self.name, stage=stage))
        except ResourceNotFoundError:
            return []

    def production_version(self) -> Optional[str]:
        versions = [m for m in self._versions(PRODUCTION_STAGE) if str(m.version).isdigit()]
        return str(max(int(m.version) for m in versions)) if versions else None

    def production(self, dst_dir: Path) -> Optional[ModelRef]:
        version = self.production_version()
        return None if version is None else self.download(version, dst_dir)

    def find(self, content_sha256: str) -> Optional[dict]:
        same = [m for m in self._versions() if (m.tags or {}).get("content_sha256") == content_sha256]
        if not same:
            return None
        model = min(same, key=lambda m: int(m.version))
        return {"version": str(model.version), "tags": dict(model.tags or {}), "source": model.path}

    def create(self, folder: Path, tags: dict, description: str) -> dict:
        import json

        from azure.ai.ml.entities import Model

        versions = [int(m.version) for m in self._versions() if str(m.version).isdigit()]
        version = str(max(versions, default=0) + 1)
        if (Path(folder) / "candidate.json").is_file():
            # The scoring script reports this in every response, as with the local registry.
            (Path(folder) / "registered.json").write_text(json.dumps({"name": self.name, "version": version}))
        # A staged version is an MLflow model too (MLmodel at its root, finetune.registry.packaging): AML's batch and
        # no-code deployments take it, and online deployments still run the project's score.py over it.
        model_type = "mlflow_model" if (Path(folder) / "MLmodel").is_file() else "custom_model"
        model = self.ml_client.models.create_or_update(
            Model(
                name=self.name, version=version, path=str(folder), type=model_type, tags=tags, description=description
            )
        )
        return {"version": str(model.version), "source": model.path}

    def download(self, version: str, dst_dir: Path) -> ModelRef:
        """The version's files under ``dst_dir`` (azure-ai-ml puts them in ``<dst>/<name>/<folder>``)."""
        dst_dir = Path(dst_dir)
        dst_dir.mkdir(parents=True, exist_ok=True)
        self.ml_client.models.download(name=self.name, version=str(version), download_path=str(dst_dir))
        markers = sorted(dst_dir.rglob("candidate.json")) or sorted(dst_dir.rglob("MLmodel"))
        folder = markers[0].parent if markers else dst_dir
        return ModelRef(name=self.name, version=str(version), path=str(folder.resolve()))

    def promote(self, version: str) -> Promotion:
        """Stage ``version`` as Production and archive the previous production version."""
        previous = self.production_version()
        for number, stage in ((previous, ARCHIVED_STAGE), (str(version), PRODUCTION_STAGE)):
            if number is None or (number == str(version) and stage == ARCHIVED_STAGE):
                continue
            model = self.ml_client.models.get(name=self.name, version=number)
            model.stage = stage
            self.ml_client.models.create_or_update(model)
        return Promotion(self.name, str(version), previous)
