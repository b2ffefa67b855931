"""The AML environments of a plan: training jobs, pipeline steps, the deployment, and AutoML's test step.

GPU stack (a deliberate choice, stated in the plan as ``compute.cuda``): AML's CUDA 12.6 base image
``mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04`` (the base of AML's own curated fine-tuning
assets, e.g. azureml-assets ``acft-medimageparse-3d-finetune``) with the torch build for CUDA 12.6 from
PyTorch's wheel index (``https://download.pytorch.org/whl/cu126``), pinned to the torch version tested here.
The PyPI torch wheel is a CUDA 13 build, which needs an R580+ driver and no longer runs on Volta; a cu126
wheel bundles its CUDA runtime and runs on any R525+ driver (CUDA minor-version compatibility) from
Volta (sm_70) to Hopper (sm_90). The curated ACPT images were the alternative; they carry their own torch,
which the project's pinned torch would replace inside a ~15 GB image. :mod:`.checks` refuses a CUDA build
that the cluster's GPU cannot run.

- training (and the sweep's trials): every project dependency pinned (``finetune.environment.conda_spec``),
  torch swapped for the compute's build; ``azureml-mlflow`` is among the dependencies, because AML points
  ``MLFLOW_TRACKING_URI`` at an ``azureml://`` URI that plain MLflow cannot open
  (https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-configure-tracking).
- steps (register, deploy): the same list with the CPU torch build on AML's CPU image; they run on the
  small CPU cluster (``compute.steps_*``), never on a GPU node.
- serving: AML's minimal inference image (``mcr.microsoft.com/azureml/minimal-py312-inference``) plus only
  what ``score.py`` imports for ``endpoint.runtime`` (``finetune.environment.serving_conda_spec``): CPU torch,
  or ONNX Runtime and no torch.
- AutoML test: AutoML NLP's own runtime image, in which its MLflow model loads; nothing is created at job time.

Every spec is built here, where the plan is submitted; a job receives it as data (the YAML, ``settings.json``),
never by reading package metadata.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from finetune.plan import RunPlan

GPU_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:latest"
CPU_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
# The minimal CPU inference image of Microsoft's list of supported prebuilt inference images ("Prebuilt Docker
# images for inference", https://learn.microsoft.com/azure/machine-learning/concept-prebuilt-docker-images-inference:
# only the images listed there are supported; minimal-py311-inference no longer is). The conda file's Python
# (this interpreter's major.minor) is the one score.py runs on: AML builds it as its own env over the image.
SERVING_IMAGE = "mcr.microsoft.com/azureml/minimal-py312-inference:latest"
# AutoML NLP's runtime (azureml-automl-dnn-nlp and its MLflow flavour): the image its best model is built for.
AUTOML_IMAGE = "mcr.microsoft.com/azureml/curated/azureml-automl-dnn-text-gpu:latest"
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
# CUDA builds this launcher knows how to install (PyTorch wheel index name -> CUDA version).
CUDA_BUILDS = {"12.6": "cu126", "12.8": "cu128"}
TRACKING_PLUGIN = "azureml-mlflow"
DESCRIPTION = "finetune {role}: {detail} (built by finetune.launch.azureml.environment)"


def torch_build(cuda: Optional[str]) -> str:
    """The PyTorch wheel index of a CUDA version (``cpu`` without one)."""
    return CUDA_BUILDS[cuda] if cuda else "cpu"


def with_torch_build(requirements: List[str], build: str) -> List[str]:
    """``requirements`` with torch pinned to its ``build`` wheel from PyTorch's index (first line: the index)."""
    result = [f"--extra-index-url {TORCH_INDEX.format(build=build)}"]
    for line in requirements:
        name, _, version = line.partition("==")
        if name.lower() == "torch" and version:
            line = f"torch=={version}+{build}"
        result.append(line)
    return result


def job_spec(build: str) -> dict:
    """Conda spec of the training/step jobs for one torch build; refuses one that cannot track on AML."""
    from finetune.environment import conda_spec, pinned_requirements
    from finetune.errors import UserError

    requirements = pinned_requirements()
    if not any(line.split("==")[0].split(">")[0].split("<")[0].strip().lower() == TRACKING_PLUGIN
               for line in requirements):
        raise UserError(f"the project's dependencies lack {TRACKING_PLUGIN}: AML jobs log to an azureml:// MLflow URI "
                        "that only this plugin opens; add it to pyproject.toml")
    return conda_spec(with_torch_build(requirements, build), name=f"finetune-{build}")


def serving_spec(runtime: str = "torch") -> dict:
    """The deployment's conda spec: only what serving with ``runtime`` needs (no torch for ONNX Runtime)."""
    from finetune.environment import serving_conda_spec

    spec = serving_conda_spec(runtime)
    if runtime == "torch":
        spec["dependencies"][-1]["pip"] = with_torch_build(spec["dependencies"][-1]["pip"], "cpu")
    return spec


def definitions(plan: "RunPlan") -> dict:
    """``role -> {"image", "conda_file", "description"}`` for every environment the plan's jobs use."""
    compute = plan.compute
    training_build = torch_build(compute.cuda if compute.device == "cuda" else None)
    result = {
        "training": {"image": GPU_IMAGE if training_build != "cpu" else CPU_IMAGE, "conda_file": job_spec(training_build),
                     "description": DESCRIPTION.format(role="training", detail=f"torch {training_build}")},
        "steps": {"image": CPU_IMAGE, "conda_file": job_spec("cpu"),
                  "description": DESCRIPTION.format(role="pipeline steps", detail="torch cpu")},
        "serving": {"image": SERVING_IMAGE, "conda_file": serving_spec(plan.endpoint.runtime),
                    "description": DESCRIPTION.format(role="serving",
                                                      detail=f"score.py only, runtime {plan.endpoint.runtime}")},
    }
    if plan.automl.engine == "text_classification":
        result["automl_test"] = {"image": AUTOML_IMAGE, "conda_file": None,
                                 "description": DESCRIPTION.format(role="AutoML test", detail="AutoML NLP runtime")}
    return result


def environment(spec: dict):
    """The Environment entity (anonymous: AML names it by a hash of its content) of one definition."""
    from azure.ai.ml.entities import Environment

    return Environment(image=spec["image"], conda_file=spec.get("conda_file"), description=spec.get("description"))


def describe(plan: "RunPlan") -> str:
    """One line for the plan printout: which torch/CUDA the training jobs get."""
    compute = plan.compute
    if compute.device != "cuda":
        return f"training environment: {CPU_IMAGE} + torch cpu wheel"
    return (f"training environment: {GPU_IMAGE} + torch {torch_build(compute.cuda)} wheel "
            f"(CUDA {compute.cuda}) from {TORCH_INDEX.format(build=torch_build(compute.cuda))}")
