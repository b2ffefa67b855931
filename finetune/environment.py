"""The runtime environment of a model, defined once.

The registered model's ``conda.yaml``, the local endpoint and the AML launcher's ``Environment`` all come
from :func:`conda_spec`, so a model is served with the library versions it was trained and tested with.
The package list is the project's own dependency list (read from the installed ``finetune``
distribution, i.e. ``pyproject.toml``), each pinned to the version installed here: a range like
``torch>=2.4`` would let a rebuilt image pick a newer release than the one that produced the model.
"""
from __future__ import annotations

import sys
from pathlib import Path

from finetune.errors import UserError

DISTRIBUTION = "finetune"
ENVIRONMENT_NAME = "finetune-runtime"


def _public_version(version: str) -> str:
    """Drop a local version label: PyPI has ``torch==2.13.0`` but no ``torch==2.13.0+cpu``."""
    return version.split("+", 1)[0]


def pinned_requirements() -> list[str]:
    """``name==version`` for every runtime dependency of the project (extras such as ``test`` excluded).

    A dependency that is not installed here keeps its declared range: pinning needs a version to pin to,
    and the spec must stay installable on the machine that builds the image.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        declared = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise UserError(f"the '{DISTRIBUTION}' package is not installed, so its dependency list cannot be read; "
                        "run `pip install -e .` in the project") from None
    pinned = []
    for line in declared:
        requirement = Requirement(line)
        # Markers naming an extra belong to optional groups; other markers are judged for this interpreter.
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            pinned.append(f"{requirement.name}=={_public_version(metadata.version(requirement.name))}")
        except metadata.PackageNotFoundError:
            pinned.append(f"{requirement.name}{requirement.specifier}")
    return pinned


# What score.py imports to serve a model, per runtime (``hf`` candidates) or for an AutoML pipeline; MLflow
# and pandas make the registered version loadable as an MLflow pyfunc model in the same environment.
SERVING_COMMON = ["numpy", "pandas", "mlflow-skinny", "azureml-inference-server-http"]
SERVING_PACKAGES = {
    "torch": ["torch", "transformers", "tokenizers"],
    "onnx": ["onnxruntime", "transformers", "tokenizers"],
    "onnx-int8": ["onnxruntime", "transformers", "tokenizers"],
    "automl": ["scikit-learn", "joblib", "scipy", "lightgbm", "xgboost-cpu"],
}


def serving_requirements(runtime: str) -> list[str]:
    """``name==version`` of what serving a model with ``runtime`` (``automl`` for a pipeline) needs, and
    nothing else: an ONNX deployment carries no PyTorch, a PyTorch one no ONNX Runtime."""
    from importlib import metadata

    pinned = []
    for name in SERVING_PACKAGES[runtime] + SERVING_COMMON:
        try:
            pinned.append(f"{name}=={_public_version(metadata.version(name))}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def serving_conda_spec(runtime: str) -> dict:
    """The conda environment a registered version is served in (its ``conda.yaml``)."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {"name": f"{ENVIRONMENT_NAME}-{runtime}", "channels": ["conda-forge"],
            "dependencies": [f"python={python}", "pip", {"pip": serving_requirements(runtime)}]}


def conda_spec() -> dict:
    """A conda environment spec: this Python (major.minor) plus the pinned pip dependencies.

    Python is pinned to major.minor only: patch releases keep the ABI, and conda channels drop old
    patch builds, which would make an exact pin unbuildable later.
    """
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "name": ENVIRONMENT_NAME,
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": pinned_requirements()}],
    }


def write_conda_yaml(path: Path) -> Path:
    """Write :func:`conda_spec` as YAML to ``path`` and return it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(conda_spec(), sort_keys=False))
    return path
