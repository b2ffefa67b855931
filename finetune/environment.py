"""The runtime environments of the project, defined once: where the dependency list comes from and how it is pinned.

Two specs come from here:

- :func:`conda_spec`: every runtime dependency of the project, each pinned to the version installed on the
  machine that builds the spec (a range like ``torch>=2.4`` would let a rebuilt image pick a newer release).
  The AML launcher turns it into its job environments (:mod:`finetune.launch.azureml.environment`).
- :func:`serving_conda_spec`: only what ``score.py`` imports, pinned the same way: the registered model's
  ``conda.yaml`` and the AML deployment's slim inference environment.

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
# What finetune/serve/score.py imports (torch and transformers for hf candidates, scikit-learn/joblib for
# automl ones) and the AML inference server that runs it. Nothing else goes into a serving image.
SERVING_PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "azureml-inference-server-http")
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


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
    raise UserError(f"the '{DISTRIBUTION}' dependency list is unavailable: the package is not installed and no "
                    f"pyproject.toml of it is at {PYPROJECT}; run from the project checkout or `pip install .`")


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
        pinned.append(f"{requirement.name}=={_public_version(version)}" if version
                      else f"{requirement.name}{requirement.specifier}")
    return pinned


def conda_spec(pip: Optional[List[str]] = None, name: str = ENVIRONMENT_NAME) -> dict:
    """A conda environment spec: this Python (major.minor) plus pip requirements (default: all, pinned).

    Python is pinned to major.minor only: patch releases keep the ABI, and conda channels drop old
    patch builds, which would make an exact pin unbuildable later.
    """
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        "name": name,
        "channels": ["conda-forge"],
        "dependencies": [f"python={python}", "pip", {"pip": pinned_requirements() if pip is None else list(pip)}],
    }


def serving_conda_spec() -> dict:
    """The scoring script's environment: :data:`SERVING_PACKAGES`, pinned like everything else."""
    return conda_spec(pinned_requirements(SERVING_PACKAGES), SERVING_ENVIRONMENT_NAME)


def write_conda_yaml(path: Path, spec: Optional[dict] = None) -> Path:
    """Write ``spec`` (default: :func:`serving_conda_spec`) as YAML to ``path`` and return it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(serving_conda_spec() if spec is None else spec, sort_keys=False))
    return path
