"""The exported deployment: an anonymous environment on a supported inference image (issue 24, defects 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amlemu.recorder import build, guard_network

# Microsoft's list of supported prebuilt inference images ("Prebuilt Docker images for inference",
# https://learn.microsoft.com/azure/machine-learning/concept-prebuilt-docker-images-inference) names this CPU
# minimal image; minimal-py311-inference is no longer in it.
SUPPORTED_CPU_MINIMAL = {"mcr.microsoft.com/azureml/minimal-py312-inference:latest"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import _pytest.monkeypatch

    from finetune.data import prepare
    from finetune.launch.azureml import export

    patch = _pytest.monkeypatch.MonkeyPatch()
    guard_network(patch)
    try:
        plan = build(["compute=a100", "dry_run=true", "dataset.sample=400"], tmp_path_factory.mktemp("out"))
        yield export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data"))
    finally:
        patch.undo()


def test_deployment_yaml_reloads_with_an_anonymous_environment(exported):
    """As the other YAMLs' environments do: a named asset would be created (and versioned) in the workspace."""
    from azure.ai.ml import load_job, load_online_deployment

    deployment = load_online_deployment(exported.folder / "deployment.yml")
    rest = deployment.environment._to_rest_object()
    assert rest.properties.is_anonymous is True, deployment.environment.name
    pipeline = load_job(exported.folder / "pipeline.yml")
    assert pipeline.jobs["register"].environment._to_rest_object().properties.is_anonymous is True


def test_the_serving_image_is_a_supported_inference_image(exported):
    from azure.ai.ml import load_online_deployment

    deployment = load_online_deployment(exported.folder / "deployment.yml")
    assert deployment.environment.image in SUPPORTED_CPU_MINIMAL
