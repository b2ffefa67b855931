"""Job environments of the AML emulation (tests/amlemu/environments.py): built from the job's own spec, with AML's
failures (a Python the code does not support, a pip list that does not resolve) and the CPU build for CUDA torch."""

from __future__ import annotations

import pytest

from amlemu.environments import EnvironmentFailure, Environments, cpu_requirements, image_facts


def environments(tmp_path) -> Environments:
    """As the emulator makes them: the exported tree's code snapshot holds no pyproject.toml."""
    (tmp_path / "code").mkdir(exist_ok=True)
    return Environments(tmp_path / "code", tmp_path, log=lambda *_: None, cache=tmp_path / "envs")


def conda(python: str, pip: list) -> dict:
    return {"name": "x", "channels": ["conda-forge"], "dependencies": [f"python={python}", "pip", {"pip": pip}]}


def test_cuda_torch_becomes_the_cpu_build_of_the_same_version():
    pip = ["--extra-index-url https://download.pytorch.org/whl/cu126", "torch==2.13.0+cu126", "numpy==2.2.6"]
    assert cpu_requirements(pip) == ["torch==2.13.0+cpu", "numpy==2.2.6"]


def test_a_python_the_code_does_not_support_fails_the_job(tmp_path):
    with pytest.raises(EnvironmentFailure, match=r"Python 3\.9, but the code requires Python >=3\.10"):
        environments(tmp_path).prepare(
            {
                "image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
                "conda_file": conda("3.9", ["numpy"]),
            }
        )
    # AutoML NLP's runtime image brings Python 3.9 and no conda file: the same failure, named by the image.
    with pytest.raises(EnvironmentFailure, match=r"image .*automl-dnn-text-gpu.* gives Python 3\.9"):
        environments(tmp_path).prepare(
            {"image": "mcr.microsoft.com/azureml/curated/azureml-automl-dnn-text-gpu:latest"}
        )


def test_the_serving_image_gives_its_python_and_its_server():
    assert image_facts("mcr.microsoft.com/azureml/minimal-py312-inference:latest") == {
        "python": "3.12",
        "packages": ["azureml-inference-server-http"],
    }
    assert image_facts("example.azurecr.io/unknown:1") is None


def test_an_unknown_image_without_a_conda_file_is_refused(tmp_path):
    with pytest.raises(EnvironmentFailure, match="unknown to the emulation"):
        environments(tmp_path).prepare({"image": "example.azurecr.io/unknown:1"})


@pytest.mark.slow  # runs pip's resolver on a real environment
def test_a_pip_list_that_does_not_resolve_fails_with_pips_reason(tmp_path):
    with pytest.raises(EnvironmentFailure, match=r"pip could not install .*ERROR: .*packaging"):
        environments(tmp_path).prepare(
            {
                "image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
                "conda_file": conda("3.11", ["packaging==23.2", "packaging==24.1"]),
            }
        )


@pytest.mark.slow  # builds a real virtual environment with pip
def test_an_environment_is_built_once_and_reused_by_its_hash(tmp_path):
    spec = {
        "image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
        "conda_file": conda("3.11", ["packaging==24.1"]),
    }
    first = environments(tmp_path).prepare(spec)
    assert not first.cached and first.python.is_file()
    again = environments(tmp_path).prepare(spec)
    assert again.cached and again.python == first.python
    other = environments(tmp_path).prepare({**spec, "conda_file": conda("3.11", ["packaging==23.2"])})
    assert other.key != first.key
