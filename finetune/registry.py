"""The local model registry: MLflow's, on the same store as tracking (``sqlite:///.../mlflow.db``).

A registered version is a self-contained folder that any machine can serve with no ``finetune`` code:
the candidate's model files, ``score.py`` (the AML entry script), ``conda.yaml`` (pinned runtime),
``sample_request.json`` (what the smoke test sends) and ``registered.json`` (``{name, version}``,
which the scoring script reports in every response).

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
from typing import Optional

from finetune.errors import UserError
from finetune.serve import SCORE_SCRIPT, ModelRef

PRODUCTION_ALIAS = "production"
CARD = "README.md"
SAMPLE_SIZE = 3


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _not_found(error) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in (
        "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created if missing with its artifacts next to a sqlite store.

    MLflow's default artifact root for a database store is ``./mlruns`` in the current directory;
    beside the database, the store and its artifacts move (and get deleted) together.
    """
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from, or None (installed from a wheel, no git).

    The checkout must be the project's own: a package installed into a virtualenv that happens to sit
    inside some other repository would otherwise report that repository's commit.
    """
    package = Path(__file__).resolve().parent
    try:
        completed = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package,
                                   capture_output=True, text=True, timeout=10)
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


def stage_artifact(candidate_dir: Path, sample_request: dict, folder: Path, card: Optional[dict] = None) -> Path:
    """Assemble the artifact in ``folder``: the candidate's files plus what :mod:`finetune.packaging`
    adds (score.py, the MLflow pyfunc model and its serving environment, sample request, model card)."""
    from finetune.packaging import GENERATED, write_serving_files

    if not SCORE_SCRIPT.is_file():
        raise UserError(f"{SCORE_SCRIPT} is missing, so a model cannot be packaged for serving; "
                        "reinstall the finetune package")
    candidate_dir = Path(candidate_dir)
    if not (candidate_dir / "candidate.json").is_file():
        raise UserError(f"{candidate_dir}: not a candidate (no candidate.json)")
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(candidate_dir, folder, ignore=lambda _dir, names: [n for n in names if n in GENERATED])
    write_serving_files(folder, sample_request, card)
    return folder


def register(candidate_dir, name: str, tracking_uri: str, tags: dict, sample_request: dict, *,
             experiment: str = "finetune", card: Optional[dict] = None) -> dict:
    """Register ``candidate_dir`` as a new version of model ``name`` (or find the identical one).

    ``tags`` (selection metrics, data and config hashes, source; see :func:`selection_tags`) go on the
    version with ``content_sha256`` and ``git_commit`` added. The artifact is logged by a run named
    ``register-<name>`` in ``experiment``. Returns ``{"name", "version", "existing", "content_sha256",
    "git_commit", "source", "tags"}``; ``existing`` is True when the same content was registered before.
    """
    with tempfile.TemporaryDirectory(prefix="finetune-register-") as scratch:
        folder = stage_artifact(Path(candidate_dir), sample_request, Path(scratch) / "model", card)
        digest = content_hash(folder)
        commit = git_commit()
        client = _client(tracking_uri)
        found = client.search_model_versions(f"name='{name}' and tags.content_sha256='{digest}'")
        if found:
            version = min(found, key=lambda v: int(v.version))
            return {"name": name, "version": str(version.version), "existing": True, "content_sha256": digest,
                    "git_commit": version.tags.get("git_commit"), "source": version.source,
                    "tags": dict(version.tags)}

        all_tags = {key: str(value) for key, value in tags.items() if value is not None}
        all_tags["content_sha256"] = digest
        if commit:
            all_tags["git_commit"] = commit
        run = client.create_run(experiment_id(tracking_uri, experiment), run_name=f"register-{name}",
                                tags=all_tags)
        try:
            client.log_artifacts(run.info.run_id, str(folder), "model")
            if not client.search_registered_models(f"name='{name}'"):
                client.create_registered_model(name, description="text classifier registered by finetune")
            version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                                  run_id=run.info.run_id, tags=all_tags)
            # The version number exists only now; the run is still open, so the file joins the same
            # artifact folder the version points at.
            (folder / "registered.json").write_text(json.dumps({"name": name, "version": str(version.version)}))
            client.log_artifact(run.info.run_id, str(folder / "registered.json"), "model")
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id)
    return {"name": name, "version": str(version.version), "existing": False, "content_sha256": digest,
            "git_commit": commit, "source": version.source, "tags": all_tags}


def promote(name: str, version, tracking_uri: str) -> dict:
    """Point the ``production`` alias at ``version``; returns ``{"name", "version", "previous"}``."""
    client = _client(tracking_uri)
    previous = production_version(client, name)
    try:
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, str(version))
    except Exception as error:
        if _not_found(error):
            raise UserError(f"model '{name}' version {version} is not registered at {tracking_uri}") from None
        raise
    return {"name": name, "version": str(version), "previous": previous}


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
            raise UserError(f"model '{name}' has no '{PRODUCTION_ALIAS}' version at {tracking_uri}; "
                            "name a version, or run the pipeline once to register one")
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


def selection_tags(selection: dict, data: dict, config: dict, source: Optional[str]) -> dict:
    """Version tags that say where a model came from and how it compared.

    ``test_<metric>.<candidate>`` for every scored candidate (the production model included), the
    data and split hashes, a hash of the run's config without its run identity (name, directory), so
    equal settings give equal hashes, and the source run or trial of the winner.
    """
    metric = selection["metric"]
    tags = {"selection.metric": metric, "selection.decision": selection["decision"],
            "candidate": selection["winner"], "source": source, "data.raw_sha256": data.get("raw_sha256")}
    for row in selection["table"]:
        if metric in row:
            tags[f"test_{metric}.{row['candidate']}"] = f"{row[metric]:.6f}"
    for split, info in data.get("splits", {}).items():
        tags[f"data.{split}_sha256"] = info.get("sha256")
    settings = {key: value for key, value in config.items() if key not in ("name", "run_dir", "dry_run")}
    tags["config_sha256"] = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return tags


def card_facts(config: dict, data: dict, selection: dict) -> dict:
    """What the model card says about where the winner came from (see :func:`finetune.packaging.model_card`)."""
    model, dataset = config.get("model") or {}, config.get("dataset") or {}
    winner = selection["winner"]
    return {"name": (config.get("select") or {}).get("registered_model_name"),
            "base_model": (model.get("hub_id") or model.get("name")) if winner != "automl" else None,
            "dataset": dataset.get("name"), "dataset_sha256": data.get("raw_sha256"),
            "split_sha256": {split: info.get("sha256") for split, info in (data.get("splits") or {}).items()},
            "metrics": (selection.get("test") or {}).get(winner, {})}


def sample_request(test_csv, size: int = SAMPLE_SIZE) -> dict:
    """A scoring request of the first ``size`` test texts: the rollout's smoke test sends it."""
    import pandas as pd

    texts = pd.read_csv(test_csv, dtype=str, keep_default_na=False, nrows=size)["text"].tolist()
    return {"data": [{"text": text} for text in texts]}


def register_selection(plan, summary: dict, out_dir: Path) -> dict:
    """The register stage of a run: register the selected candidate and return the ``registry`` section.

    The section carries ``model_ref`` (the registered version, what a rollout deploys: the registry's
    copy, not the run's; downloaded to ``out_dir/model`` only from a remote store) and ``sample_request``.
    """
    selection = summary["selection"]
    winner = selection["winner"]
    candidate = summary["candidates"][winner]
    request = sample_request(summary["data"]["splits"]["test"]["path"])
    registered = register(candidate["path"], plan.select.registered_model_name, plan.tracking.uri,
                          selection_tags(selection, summary["data"], plan.to_dict(), candidate.get("source")),
                          request, experiment=plan.tracking.experiment,
                          card=card_facts(plan.to_dict(), summary["data"], selection))
    out_dir = Path(out_dir)
    if (out_dir / "model").exists():
        shutil.rmtree(out_dir / "model")
    ref = resolve(registered["name"], registered["version"], plan.tracking.uri, out_dir)
    return {**registered, "model_ref": ref, "sample_request": request}
