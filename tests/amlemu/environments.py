"""Job environments of the AML emulation: each job runs in a Python environment built from its own spec.

On AML a job's environment is an image plus, optionally, a conda file; AML builds it once per distinct content
(an anonymous environment is named by a hash of it) and a job whose environment cannot be built fails before
it starts ("Image build failed"; https://learn.microsoft.com/azure/machine-learning/how-to-troubleshoot-environments).
Here the same content makes one virtual environment, cached by its hash under
``~/.cache/finetune/aml-emulation/envs/<hash>`` (``FINETUNE_AML_ENV_CACHE`` moves it), and reused by every
later emulation on this machine, CI's included:

- Python: the conda file's ``python=X.Y`` (conda creates the environment with it), else the image's own Python
  (:data:`IMAGES`); the venv is made with that version (pyenv's, or ``pythonX.Y`` on PATH). A version outside
  the code's ``requires-python`` (pyproject.toml) fails the job as it would on AML, where the code would not
  run under it.
- Packages: the conda file's pip list, installed by pip with its resolver: a missing or conflicting pin fails
  the job with pip's own error line. CUDA builds of torch (``torch==X+cu126`` from PyTorch's CUDA index, the
  ``--extra-index-url`` line) become the CPU build of the same version (``torch==X+cpu``), which pip finds in
  this machine's own wheel store; PyPI has no ``+cpu`` build, so a missing CPU wheel fails instead of pulling a
  multi-GB CUDA build.
- An image without a conda file brings its own packages; only the images listed in :data:`IMAGES` are known
  (their Python and what they preinstall), any other fails with a clear line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

CACHE = Path(os.environ.get("FINETUNE_AML_ENV_CACHE", Path.home() / ".cache" / "finetune" / "aml-emulation" / "envs"))
# Images by name (tag dropped): their Python and the packages they preinstall. Sources: the images' definitions
# in Azure/azureml-assets (assets/training/automl/environments/*/context/Dockerfile for AutoML NLP's runtime:
# Python 3.10 in ai-ml-automl-dnn-text-gpu since commit 35ccf2cb, 3.9 in the retired azureml-automl-dnn-text-gpu) and Microsoft's "Prebuilt Docker images for inference" page (minimal-pyXYZ-inference: Python X.YZ
# with azureml-inference-server-http). The openmpi base images carry conda and no Python of their own to speak
# of: a job on them gets the conda file's.
IMAGES = {
    r"azureml/openmpi[\d.]+(-cuda[\d.]+)?-ubuntu[\d.]+": {"python": None, "packages": []},
    r"azureml/minimal-py3(\d+)-inference": {"python": "3.{0}", "packages": ["azureml-inference-server-http"]},
    r"azureml/curated/azureml-automl-dnn-text-gpu": {"python": "3.9", "packages": None},
    r"azureml/curated/ai-ml-automl-dnn-text-gpu": {"python": "3.10", "packages": None},
}
CUDA_SUFFIX = re.compile(r"^(torch(?:vision|audio)?\s*==\s*[\w.]+)\+cu\d+\s*$", re.IGNORECASE)
PYTORCH_INDEX = re.compile(r"^--(extra-)?index-url\s+https://download\.pytorch\.org/whl/\S+$")
PYENV = Path.home() / ".pyenv" / "versions"
REPO = Path(__file__).resolve().parents[2]


class EnvironmentFailure(Exception):
    """The job's environment cannot be built (AML fails the job before it starts)."""


@dataclass
class JobEnvironment:
    python: Path
    label: str  # what the node table shows
    key: str
    seconds: float  # time spent on this environment by this emulation (0 when it was cached and checked)
    cached: bool


def requires_python(code: Path) -> Optional[str]:
    """The code's ``requires-python``: a pyproject.toml in the snapshot or above it, else the project's own (the
    exported snapshot holds the package folder only, and it is this repository's package)."""
    import tomllib

    for folder in [code, *code.parents, REPO]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            return tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("requires-python")
    return None


def image_facts(image: str) -> Optional[dict]:
    name = image.split("@")[0].rsplit(":", 1)[0] if image.count(":") else image
    for pattern, facts in IMAGES.items():
        match = re.search(pattern + "$", name)
        if match:
            python = facts["python"].format(*match.groups()) if facts["python"] else None
            return {"python": python, "packages": facts["packages"]}
    return None


def conda_parts(conda: Union[dict, str, None], tree: Path) -> tuple:
    """``(python version or None, pip lines)`` of a conda file (inline dict, YAML text, or a path in the tree)."""
    import yaml

    if conda is None:
        return None, None
    if isinstance(conda, str):
        path = tree / conda
        conda = yaml.safe_load(path.read_text(encoding="utf-8") if path.is_file() else conda)
    python, pip = None, []
    for entry in conda.get("dependencies") or []:
        if isinstance(entry, dict):
            pip += list(entry.get("pip") or [])
        else:
            match = re.fullmatch(r"python\s*[=<>]*=?\s*([\d.]+)", str(entry).strip())
            if match:
                python = ".".join(match.group(1).split(".")[:2])
    return python, pip


def cpu_requirements(pip: List[str]) -> List[str]:
    """The pip list as this CPU-only machine installs it: CUDA builds of torch become the CPU build."""
    result = []
    for line in pip:
        line = line.strip()
        if PYTORCH_INDEX.match(line):
            continue  # the CPU build of the same version comes from this machine's own wheel store
        cuda = CUDA_SUFFIX.match(line)
        result.append(f"{cuda.group(1)}+cpu" if cuda else line)
    return result


def python_binary(version: str) -> Path:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if found:
        return found[-1]
    on_path = shutil.which(f"python{version}")
    if on_path:
        return Path(on_path)
    raise EnvironmentFailure(
        f"no Python {version} on this machine to build the job environment with (looked in {PYENV} and on PATH)"
    )


def pip_error(log: str) -> str:
    """pip's own reason, one line: its first ERROR line (not the help link) and the requirements it blames."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("WARNING:")]
    errors = [line for line in lines if line.startswith("ERROR:") and "ResolutionImpossible" not in line]
    if not errors:
        return lines[-1] if lines else "pip failed with no output"
    causes = [line for line in lines if " requested " in line or " depends on " in line]
    return errors[0] + (f" (the conflict: {'; '.join(causes[:4])})" if causes else "")


class Environments:
    """Builds (or finds cached) the venv of each distinct environment spec of one emulation."""

    def __init__(self, code: Path, tree: Path, log=print, cache: Path = CACHE):
        self.code_requirement = requires_python(code)
        self.tree = tree
        self.log = log
        self.cache = cache
        self.built: dict = {}
        self.timings: List[dict] = []

    def check_python(self, version: str, source: str) -> None:
        from packaging.specifiers import SpecifierSet

        if self.code_requirement and version not in SpecifierSet(self.code_requirement):
            raise EnvironmentFailure(
                f"{source} gives Python {version}, but the code requires Python "
                f"{self.code_requirement} (pyproject.toml requires-python)"
            )

    def resolve(self, environment) -> tuple:
        """``(python version, pip lines, label)`` of a YAML ``environment`` (inline image + conda file)."""
        if not isinstance(environment, dict):
            raise EnvironmentFailure(
                f"environment {environment!r}: only inline environments (image + conda file) "
                "are emulated; a registered one would have to be read from the workspace"
            )
        image = str(environment.get("image") or "")
        facts = image_facts(image) if image else None
        python, pip = conda_parts(environment.get("conda_file"), self.tree)
        if pip is None:  # the image alone
            if facts is None or facts["packages"] is None:
                source = f"image {image} ({'its Python ' + facts['python'] if facts else 'unknown to the emulation'})"
                if facts and facts["python"]:
                    self.check_python(facts["python"], f"image {image}")
                raise EnvironmentFailure(
                    f"{source} has no conda file, and the emulation cannot reproduce the packages of that image"
                )
            python, pip = facts["python"], list(facts["packages"])
        elif facts and facts["packages"]:
            named = {re.split(r"[=<>!~ ]", line, maxsplit=1)[0].lower() for line in pip}
            pip = [p for p in facts["packages"] if p.lower() not in named] + pip
        if python is None:
            python = (facts or {}).get("python")
        if python is None:
            raise EnvironmentFailure(
                f"environment on {image or 'no image'}: its conda file names no python=X.Y and "
                "the image's Python is unknown"
            )
        self.check_python(
            python, f"the environment's conda file ({image})" if environment.get("conda_file") else f"image {image}"
        )
        return python, cpu_requirements(pip), f"{image.split('/')[-1].split(':')[0]} py{python}"

    def prepare(self, environment) -> JobEnvironment:
        python, requirements, label = self.resolve(environment)
        key = hashlib.sha256(json.dumps({"python": python, "pip": requirements}).encode()).hexdigest()[:16]
        if key in self.built:
            if isinstance(self.built[key], EnvironmentFailure):
                raise self.built[key]  # AML builds an environment once: every job on it fails the same way
            return self.built[key]
        started = time.time()
        folder = self.cache / key
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # CI and a developer's emulation may build the same spec at once
            cached = (folder / "ready.json").is_file()
            if not cached:
                try:
                    self.build(folder, python, requirements, label)
                except EnvironmentFailure as failure:
                    self.built[key] = failure
                    raise
        built = JobEnvironment(
            folder / "bin" / "python", f"{label} [{key[:8]}]", key, round(time.time() - started, 1), cached
        )
        self.timings.append(
            {"key": key, "label": label, "cached": cached, "seconds": built.seconds, "packages": len(requirements)}
        )
        self.log(f"  environment {label} [{key[:8]}]: {'cached' if cached else 'built'} in {built.seconds:.0f} s")
        self.built[key] = built
        return built

    def build(self, folder: Path, python: str, requirements: List[str], label: str) -> None:
        # Built in place (console scripts such as torchrun carry the venv's absolute path); ready.json marks it done.
        shutil.rmtree(folder, ignore_errors=True)
        started = time.time()
        self.log(f"  building environment {label}: Python {python}, {len(requirements)} pip lines")
        subprocess.run([str(python_binary(python)), "-m", "venv", str(folder)], check=True, capture_output=True)
        (folder / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # The conda file's unpinned `pip` is conda-forge's newest; a venv's bundled pip can be years older (pyenv's
        # 3.11.7 has pip 23.2, whose resolver crashes with InconsistentCandidate on this project's pip list).
        subprocess.run(
            [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            check=True,
            capture_output=True,
            env=env,
        )
        completed = subprocess.run(
            [
                str(folder / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--no-compile",
                "--disable-pip-version-check",
                "-r",
                str(folder / "requirements.txt"),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        (folder / "pip.log").write_text(completed.stdout + completed.stderr, encoding="utf-8")
        if completed.returncode != 0:
            raise EnvironmentFailure(
                f"environment {label}: pip could not install its conda file's pip list: "
                f"{pip_error(completed.stderr or completed.stdout)} (log: {folder / 'pip.log'})"
            )
        (folder / "ready.json").write_text(
            json.dumps(
                {
                    "python": python,
                    "pip": requirements,
                    "label": label,
                    "build_seconds": round(time.time() - started, 1),
                }
            )
        )
