"""The local model registry: MLflow's, on the same store as tracking (``sqlite:///.../mlflow.db``).

A registered version is a self-contained folder that any machine can serve with no ``finetune`` code:
the candidate's model files (for its serving runtime), ``score.py`` (the AML entry script), an MLflow
pyfunc model over the same scorer (``MLmodel``, ``conda.yaml`` of the runtime's serving environment), a
model card (``README.md``), ``sample_request.json`` (what the smoke test sends) and ``registered.json``
(``{name, version}``, which the scoring script reports in every response); see :mod:`finetune.registry.packaging`.
A local store's versions are used in place (:func:`resolve`): the registry holds the one registered copy.

Registering is idempotent: the artifact's content hash is a tag, and a second registration of the same
content returns the existing version instead of adding an identical one. The ``production`` alias is
moved only by :func:`promote`, which the launcher calls after a successful rollout, so the alias always
names the version that is actually serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Protocol

from finetune.errors import UserError
from finetune.plan.results import Promotion
from finetune.registry.packaging import GENERATED, write_serving_files
from finetune.serve import SCORE_SCRIPT, ModelRef
from finetune.system import locks

PRODUCTION_ALIAS = "production"
CARD = "README.md"


# Stores this process has opened: creating the client creates (or migrates) the store, under the store lock
# the first time.
_OPENED: set = set()


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    if tracking_uri in _OPENED:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with locks.store(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    _OPENED.add(tracking_uri)
    return client


def _not_found(error) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    )


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing with its artifacts next to a sqlite store.

    MLflow's default artifact root for a database store is ``./mlruns`` in the current directory;
    beside the database, the store and its artifacts move (and get deleted) together.
    """
    client = _client(tracking_uri)
    with locks.store(tracking_uri):  # get-or-create: two runs must not both create it
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)


def git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from, or None (installed from a wheel, no git).

    The checkout must be the project's own: a package installed into a virtualenv that happens to sit
    inside some other repository would otherwise report that repository's commit.
    """
    package = Path(__file__).resolve().parents[1]
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = completed.stdout.split()
    if completed.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / package.name != package:
        return None
    return lines[1]


def content_hash(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order: equal folders, equal hash.

    The model card (README.md) is left out: it reports the metrics of the run that registered the model,
    and the same model tested on another run's split is still the same model.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.relative_to(folder) != Path(CARD)):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def stage_artifact(
    candidate_dir: Path, sample_request: dict, folder: Path, conda: Optional[dict] = None, card: Optional[dict] = None
) -> Path:
    """Assemble the artifact in ``folder``: the candidate's files plus what :mod:`finetune.registry.packaging` adds
    (score.py, the MLflow pyfunc model, sample_request.json, the model card from ``card``).

    ``conda`` is the serving environment spec; by default it is built here (from the project's dependency
    list), which a job cannot do: AML's register step passes the spec the submitting machine built.
    """
    if not SCORE_SCRIPT.is_file():
        raise UserError(
            f"{SCORE_SCRIPT} is missing, so a model cannot be packaged for serving; reinstall the finetune package"
        )
    candidate_dir = Path(candidate_dir)
    if not (candidate_dir / "candidate.json").is_file():
        raise UserError(f"{candidate_dir}: not a candidate (no candidate.json)")
    if folder.exists():
        shutil.rmtree(folder)
    # Only the top level's generated files are stale: a wrapped MLflow model's own MLmodel and conda.yaml stay.
    shutil.copytree(
        candidate_dir,
        folder,
        ignore=lambda directory, names: [n for n in names if n in GENERATED and Path(directory) == candidate_dir],
    )
    write_serving_files(folder, sample_request, card, conda)
    return folder


def register(
    candidate_dir,
    name: str,
    tracking_uri: str,
    tags: dict,
    sample_request: dict,
    *,
    experiment: str = "finetune",
    card: Optional[dict] = None,
) -> dict:
    """Register ``candidate_dir`` as a new version of model ``name`` (or find the identical one).

    ``tags`` (selection metrics, data and config hashes, source; see
    :func:`finetune.registry.registration.selection_tags`) go on the
    version with ``content_sha256`` and ``git_commit`` added. The artifact is logged by a run named
    ``register-<name>`` in ``experiment``. Returns ``{"name", "version", "existing", "content_sha256",
    "git_commit", "source", "tags"}``; ``existing`` is True when the same content was registered before.
    """
    with tempfile.TemporaryDirectory(prefix="finetune-register-") as scratch:
        folder = stage_artifact(Path(candidate_dir), sample_request, Path(scratch) / "model", card=card)
        return register_folder(MlflowRegistry(name, tracking_uri, experiment), folder, tags, git_commit())


def registration_tags(tags: dict, digest: str, commit: Optional[str]) -> dict:
    """The tags of a new version, written by this one function for every registry."""
    all_tags = {key: str(value) for key, value in tags.items() if value is not None}
    all_tags["content_sha256"] = digest
    if commit:
        all_tags["git_commit"] = commit
    return all_tags


def register_folder(
    model_registry: "ModelRegistry",
    folder: Path,
    tags: dict,
    commit: Optional[str],
    description: str = "text classifier registered by finetune",
) -> dict:
    """Register a staged artifact folder in ``model_registry``, or find the version with the same content."""
    digest = content_hash(folder)
    found = model_registry.find(digest)
    if found is not None:
        return {
            "name": model_registry.name,
            "version": str(found["version"]),
            "existing": True,
            "content_sha256": digest,
            "git_commit": found["tags"].get("git_commit"),
            "source": found.get("source"),
            "tags": dict(found["tags"]),
        }
    all_tags = registration_tags(tags, digest, commit)
    created = model_registry.create(folder, all_tags, description)
    return {
        "name": model_registry.name,
        "version": str(created["version"]),
        "existing": False,
        "content_sha256": digest,
        "git_commit": commit,
        "source": created.get("source"),
        "tags": all_tags,
    }


class ModelRegistry(Protocol):
    """A model registry as selection and rollout need it: MLflow's locally, AML's on AML
    (:class:`finetune.launch.azureml.runtime.registry.AmlRegistry`). ``name`` is the registered model name."""

    name: str

    def production(self, dst_dir: Path) -> Optional[ModelRef]: ...
    def find(self, content_sha256: str) -> Optional[dict]: ...  # {"version", "tags", "source"}
    def create(self, folder: Path, tags: dict, description: str) -> dict: ...  # {"version", "source"}
    def download(self, version: str, dst_dir: Path) -> ModelRef: ...
    def promote(self, version: str) -> Promotion: ...


class MlflowRegistry:
    """:class:`ModelRegistry` over MLflow's model registry (the tracking store's own)."""

    def __init__(self, name: str, tracking_uri: str, experiment: str = "finetune", run_id: Optional[str] = None):
        """``run_id``: log new versions from this run (the pipeline run that holds the selection's metrics,
        so a version links to them) instead of a ``register-<name>`` run of their own."""
        self.name, self.tracking_uri, self.experiment, self.run_id = name, tracking_uri, experiment, run_id

    def production(self, dst_dir: Path) -> Optional[ModelRef]:
        return production(self.name, self.tracking_uri, dst_dir)

    def find(self, content_sha256: str) -> Optional[dict]:
        found = _client(self.tracking_uri).search_model_versions(
            f"name='{self.name}' and tags.content_sha256='{content_sha256}'"
        )
        if not found:
            return None
        version = min(found, key=lambda v: int(v.version))
        return {"version": str(version.version), "tags": dict(version.tags), "source": version.source}

    def create(self, folder: Path, tags: dict, description: str) -> dict:
        client = _client(self.tracking_uri)
        own_run = self.run_id is None
        run = (
            client.create_run(
                experiment_id(self.tracking_uri, self.experiment), run_name=f"register-{self.name}", tags=tags
            )
            if own_run
            else client.get_run(self.run_id)
        )
        # A pipeline run resumed after a retrain may register twice: each content gets its own folder there.
        artifact_path = "model" if own_run else f"registered-model/{tags['content_sha256'][:12]}"
        try:
            client.log_artifacts(run.info.run_id, str(folder), artifact_path)
            if not client.search_registered_models(f"name='{self.name}'"):
                client.create_registered_model(self.name, description=description)
            version = client.create_model_version(
                self.name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run.info.run_id, tags=tags
            )
            # The version number exists only now; the run is still open, so the file joins the same
            # artifact folder the version points at.
            (Path(folder) / "registered.json").write_text(
                json.dumps({"name": self.name, "version": str(version.version)})
            )
            client.log_artifact(run.info.run_id, str(Path(folder) / "registered.json"), artifact_path)
        except BaseException:
            if own_run:
                client.set_terminated(run.info.run_id, status="FAILED")
            raise
        if own_run:
            client.set_terminated(run.info.run_id)
        return {"version": str(version.version), "source": version.source}

    def download(self, version: str, dst_dir: Path) -> ModelRef:
        return resolve(self.name, version, self.tracking_uri, dst_dir)

    def promote(self, version: str) -> Promotion:
        return promote(self.name, version, self.tracking_uri)


def promote(name: str, version, tracking_uri: str) -> Promotion:
    """Point the ``production`` alias at ``version``."""
    client = _client(tracking_uri)
    previous = production_version(client, name)
    try:
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, str(version))
    except Exception as error:
        if _not_found(error):
            raise UserError(f"model '{name}' version {version} is not registered at {tracking_uri}") from None
        raise
    return Promotion(name, str(version), previous)


def production_version(client, name: str) -> Optional[str]:
    try:
        return str(client.get_model_version_by_alias(name, PRODUCTION_ALIAS).version)
    except Exception as error:
        if _not_found(error):
            return None
        raise


def resolve(name: str, version: Optional[str], tracking_uri: str, dst_dir: Optional[Path] = None) -> ModelRef:
    """Version ``version`` of ``name`` (None: the production alias) as a ModelRef to a local folder.

    A registry whose artifacts are local files (the default sqlite store with ``mlartifacts/`` beside
    it) is referenced in place: the registry holds the one registered copy of the weights, and
    registered artifacts are never rewritten. Any other store is downloaded into ``dst_dir`` (default: a
    new temporary folder).
    """
    from urllib.parse import unquote, urlparse

    from mlflow.artifacts import download_artifacts

    client = _client(tracking_uri)
    if version is None:
        version = production_version(client, name)
        if version is None:
            raise UserError(
                f"model '{name}' has no '{PRODUCTION_ALIAS}' version at {tracking_uri}; "
                "name a version, or run the pipeline once to register one"
            )
    try:
        uri = client.get_model_version_download_uri(name, str(version))
    except Exception as error:
        if _not_found(error):
            raise UserError(f"model '{name}' version {version} is not registered at {tracking_uri}") from None
        raise
    parsed = urlparse(uri)
    if parsed.scheme in ("file", "") and Path(unquote(parsed.path)).is_dir():
        return ModelRef(name=name, version=str(version), path=str(Path(unquote(parsed.path)).resolve()))
    target = Path(dst_dir) if dst_dir else Path(tempfile.mkdtemp(prefix=f"finetune-{name}-v{version}-"))
    target.mkdir(parents=True, exist_ok=True)
    path = download_artifacts(artifact_uri=uri, dst_path=str(target), tracking_uri=tracking_uri)
    return ModelRef(name=name, version=str(version), path=str(Path(path).resolve()))


def alias_version(name: str, alias: str, tracking_uri: str) -> str:
    """The version of ``name`` that ``alias`` points at; a UserError when there is none."""
    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except Exception as error:
        if _not_found(error):
            raise UserError(f"model '{name}' has no version aliased '{alias}' at {tracking_uri}") from None
        raise


def production(name: str, tracking_uri: str, dst_dir: Optional[Path] = None) -> Optional[ModelRef]:
    """The version under the ``production`` alias, downloaded; None when nothing is in production yet."""
    version = production_version(_client(tracking_uri), name)
    return None if version is None else resolve(name, version, tracking_uri, dst_dir)
