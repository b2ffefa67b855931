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

- training (and the sweep's trials): what training imports (:data:`JOB_PACKAGES`), fully pinned, torch swapped
  for the compute's build (its CUDA wheel pins its own nvidia-* and triton versions); ``azureml-mlflow`` is
  among them, because AML points ``MLFLOW_TRACKING_URI`` at an ``azureml://`` URI that plain MLflow cannot open
  (https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-configure-tracking).
- steps (register, batch prediction) with the CPU torch build, and deploy without torch, on AML's CPU image;
  they run on the small CPU cluster (``compute.steps_*``), never on a GPU node.
- serving: AML's minimal inference image (``mcr.microsoft.com/azureml/minimal-py312-inference``) plus only
  what ``score.py`` imports for ``endpoint.runtime`` (``finetune.registry.environments.serving_conda_spec``): CPU torch,
  or ONNX Runtime and no torch.
- AutoML test: AutoML NLP's runtime image (its MLflow model loads in the image's own conda env, see
  AUTOML_IMAGE) with the project's conda env for the step's code on top.

Every spec is built here, where the plan is submitted; a job receives it as data (the YAML, ``settings.json``),
never by reading package metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from finetune.errors import UserError

# The module, not its names: what it reads from the installed packages is replaced in tests.
from finetune.registry import environments

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan

GPU_IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:latest"
CPU_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
# The minimal CPU inference image of Microsoft's list of supported prebuilt inference images ("Prebuilt Docker
# images for inference", https://learn.microsoft.com/azure/machine-learning/concept-prebuilt-docker-images-inference:
# only the images listed there are supported; minimal-py311-inference no longer is). The conda file's Python
# (this interpreter's major.minor) is the one score.py runs on: AML builds it as its own env over the image.
SERVING_IMAGE = "mcr.microsoft.com/azureml/minimal-py312-inference:latest"
# AutoML NLP's runtime, the maintained asset ai-ml-automl-dnn-text-gpu (Azure/azureml-assets,
# assets/training/automl/environments/ai-ml-automl-dnn-text-gpu: environment.yaml publishes this image; its
# context/Dockerfile creates the conda env /azureml-envs/azureml-automl-dnn-text-gpu with python=3.10,
# numpy~=1.23.5, pandas~=1.5.3, scikit-learn=1.5.1 and azureml-automl-dnn-nlp, in which AutoML's MLflow model
# loads). That Python and those pins are below what this package supports (pyproject: Python >= 3.10 with
# numpy >= 1.26, pandas >= 2.2), so the test step does not run in that env: the image gets the project's own
# conda env on top (AML builds an image + conda_file environment as a new conda env over the image), the
# step's code runs there, and only the model's predict_proba runs in AutoML's env, by AUTOML_PYTHON.
AUTOML_IMAGE = "mcr.microsoft.com/azureml/curated/ai-ml-automl-dnn-text-gpu:latest"
AUTOML_PYTHON = "/azureml-envs/azureml-automl-dnn-text-gpu/bin/python"
# The variable that names AUTOML_PYTHON to the test step (finetune.launch.azureml.runtime.steps).
AUTOML_PYTHON_VARIABLE = "FINETUNE_AUTOML_PYTHON"
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"
# CUDA builds this launcher knows how to install (PyTorch wheel index name -> CUDA version).
CUDA_BUILDS = {"12.6": "cu126", "12.8": "cu128"}
TRACKING_PLUGIN = "azureml-mlflow"
# What each job's code imports, as the project's dependency names (followed from the jobs' entry points:
# ``python -m finetune.train`` imported exactly the training list on a tiny run). Each environment holds its
# list and what those pull in (finetune.registry.environments.pinned_closure), nothing else: the packaged MiniLM never
# (a job's base model is the export's base_model/ folder), FLAML, Hydra or the report's libraries neither.
JOB_PACKAGES = {
    # a training run or sweep trial: the model, the data, MLflow tracking to the workspace, GPU telemetry
    "training": (
        "torch",
        "transformers",
        "accelerate",
        "datasets",
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "seqeval",  # NER's entity metric (finetune.tasks.ner_metrics), the val objective of NER trials
        "mlflow-skinny",
        "azureml-mlflow",
        "pyyaml",
        "tqdm",
        "nvitop",
    ),
    # register (re-scores the candidates and production, exports ONNX for the onnx runtimes, writes the MLflow
    # model, talks to the registry) and batch prediction with a registered model (predict.yml)
    "steps": (
        "torch",
        "transformers",
        "onnx",
        "onnxruntime",
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "seqeval",
        "mlflow-skinny",
        "azureml-mlflow",
        "azure-ai-ml",
        "azure-identity",
        "pyyaml",
        "tqdm",
    ),
    # deploy: AML's control plane only; the deployment itself runs in the serving environment
    "deploy": ("azure-ai-ml", "azure-identity", "numpy", "pyyaml"),
    # AutoML's test: the decision rule chosen on val and the metric function over the probabilities AutoML's own
    # env computes (AUTOML_PYTHON), or the entity metric over the tags AutoML's NER model gives; the splits are read
    # with pandas (the emulation's venv of this list found it)
    "automl_test": ("numpy", "pandas", "scikit-learn", "seqeval", "pyyaml"),
}
# Roles whose jobs log to the workspace's MLflow (AML points MLFLOW_TRACKING_URI at azureml://).
TRACKING_ROLES = ("training", "steps")
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


def job_spec(role: str, build: str) -> dict:
    """Conda spec of one job role (:data:`JOB_PACKAGES`) for one torch build, pinned with everything its packages
    pull in; refuses a tracking role whose dependency list cannot track on AML."""
    if role in TRACKING_ROLES and not any(
        line.split("==")[0].split(">")[0].split("<")[0].strip().lower() == TRACKING_PLUGIN
        for line in environments.pinned_requirements()
    ):
        raise UserError(
            f"the project's dependencies lack {TRACKING_PLUGIN}: AML jobs log to an azureml:// MLflow URI "
            "that only this plugin opens; add it to pyproject.toml"
        )
    requirements = environments.pinned_closure(JOB_PACKAGES[role])
    if any(line.split("==")[0].lower() == "torch" for line in requirements):
        requirements = with_torch_build(requirements, build)
    return environments.conda_spec(requirements, name=f"finetune-{role.replace('_', '-')}-{build}")


def serving_spec(runtime: str = "torch") -> dict:
    """The deployment's conda spec: only what serving with ``runtime`` needs (no torch for ONNX Runtime)."""
    spec = environments.serving_conda_spec(runtime)
    if runtime == "torch":
        spec["dependencies"][-1]["pip"] = with_torch_build(spec["dependencies"][-1]["pip"], "cpu")
    return spec


def definitions(plan: "RunPlan") -> dict:
    """``role -> {"image", "conda_file", "description"}`` for every environment the plan's jobs use."""
    compute = plan.compute
    training_build = torch_build(compute.cuda if compute.device == "cuda" else None)
    result = {
        "training": {
            "image": GPU_IMAGE if training_build != "cpu" else CPU_IMAGE,
            "conda_file": job_spec("training", training_build),
            "description": DESCRIPTION.format(role="training", detail=f"torch {training_build}"),
        },
        "steps": {
            "image": CPU_IMAGE,
            "conda_file": job_spec("steps", "cpu"),
            "description": DESCRIPTION.format(role="pipeline steps", detail="torch cpu"),
        },
        "deploy": {
            "image": CPU_IMAGE,
            "conda_file": job_spec("deploy", "cpu"),
            "description": DESCRIPTION.format(role="deploy step", detail="AML control plane, no torch"),
        },
        "serving": {
            "image": SERVING_IMAGE,
            "conda_file": serving_spec(plan.endpoint.runtime),
            "description": DESCRIPTION.format(role="serving", detail=f"score.py only, runtime {plan.endpoint.runtime}"),
        },
    }
    if plan.automl.engine == "text_classification":
        result["automl_test"] = {
            "image": AUTOML_IMAGE,
            "conda_file": job_spec("automl_test", "cpu"),
            "description": DESCRIPTION.format(
                role="AutoML test", detail="finetune's metrics over AutoML NLP's runtime"
            ),
        }
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
    return (
        f"training environment: {GPU_IMAGE} + torch {torch_build(compute.cuda)} wheel "
        f"(CUDA {compute.cuda}) from {TORCH_INDEX.format(build=torch_build(compute.cuda))}"
    )
