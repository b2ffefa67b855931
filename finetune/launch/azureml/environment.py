"""The AML Environment every job and the deployment run in: the project's pinned dependencies on an AML base image.

Base image: ``mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04``, AML's GPU base image
made to carry a conda file. The curated ACPT images (``acpt-pytorch-2.2-cuda12.1``) were the other
candidate; they ship a conda environment with their own torch, which a conda file would not use but
replace, so the job would pay for two PyTorch stacks in one ~15 GB image and still run ours. The pip
torch wheels bundle their CUDA runtime and need only the node's driver, so the image's CUDA version does
not bind torch's. The same image serves CPU clusters and the endpoint: one build, cached by AML.

The conda file is :func:`finetune.environment.conda_spec`, the one the local registry writes next to each
model, so AML trains and serves with the library versions that were tested here. The environment stays
anonymous (AML names it by a hash of its content) so that the pipeline YAML is self-contained and an
unchanged definition reuses the image AML built before.
"""
from __future__ import annotations

BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
DESCRIPTION = "finetune: the project's pinned dependencies (finetune.environment.conda_spec) on AML's GPU base image"


def definition() -> dict:
    """``{"image", "conda_file"}``: what the deploy step needs to rebuild the same Environment in a job."""
    from finetune.environment import conda_spec

    return {"image": BASE_IMAGE, "conda_file": conda_spec()}


# AML's CPU base image for a conda file: online deployments of the CPU runtimes need no CUDA layers.
SERVING_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"


def serving_definition(runtime: str) -> dict:
    """The deployment's environment: only what serving with ``runtime`` needs
    (:func:`finetune.environment.serving_conda_spec`, the registered version's own conda.yaml)."""
    from finetune.environment import serving_conda_spec

    return {"image": SERVING_IMAGE, "conda_file": serving_conda_spec(runtime)}


def environment(spec: dict | None = None):
    """The Environment entity (anonymous) of ``spec`` (default: :func:`definition`)."""
    from azure.ai.ml.entities import Environment

    spec = spec or definition()
    return Environment(image=spec["image"], conda_file=spec["conda_file"], description=DESCRIPTION)
