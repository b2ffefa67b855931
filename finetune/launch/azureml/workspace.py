"""Which AML workspace a plan submits to: from the config, the environment, or an AML config.json.

Each of subscription, resource group and workspace name is taken from the first source that has it:
``workspace.*`` in the config, then environment variables, then the ``config.json`` the Azure ML studio
offers for download (``workspace.config_path``, else ``./config.json`` or ``./.azureml/config.json``,
the places ``MLClient.from_config`` looks first). The current directory only: walking up the parent
directories as ``from_config`` does could pick an unrelated ``config.json``.

None of these is a secret; credentials never come from here (see :mod:`.credentials`). Standard
library only, because the plan check calls it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from finetune.errors import UserError

FIELDS = ("subscription_id", "resource_group", "workspace_name")
ENV_VARS: Dict[str, tuple] = {
    "subscription_id": ("AZUREML_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID"),
    "resource_group": ("AZUREML_RESOURCE_GROUP",),
    "workspace_name": ("AZUREML_WORKSPACE_NAME",),
}
CONFIG_FILES = ("config.json", ".azureml/config.json")
# What AML injects into every job: the register and deploy steps find their workspace here.
JOB_ENV_VARS = {
    "subscription_id": "AZUREML_ARM_SUBSCRIPTION",
    "resource_group": "AZUREML_ARM_RESOURCEGROUP",
    "workspace_name": "AZUREML_ARM_WORKSPACE_NAME",
}


@dataclass
class Workspace:
    subscription_id: Optional[str]
    resource_group: Optional[str]
    workspace_name: Optional[str]
    sources: Dict[str, str] = field(default_factory=dict)  # field -> where its value came from
    problems: List[str] = field(default_factory=list)


def resolve(config, environ: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None) -> Workspace:
    """The workspace of a ``WorkspaceConfig``, with a problem line per field no source provides."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else Path(cwd)
    values: Dict[str, Optional[str]] = {name: None for name in FIELDS}
    sources: Dict[str, str] = {}
    problems: List[str] = []
    for name in FIELDS:
        if getattr(config, name):
            values[name], sources[name] = getattr(config, name), f"workspace.{name}"
            continue
        for variable in ENV_VARS[name]:
            if environ.get(variable):
                values[name], sources[name] = environ[variable], variable
                break
    if not all(values.values()):
        found, file_problem = _config_file(config.config_path, cwd)
        if file_problem:
            problems.append(file_problem)
        for name in FIELDS:
            if not values[name] and found and found[1].get(name):
                values[name], sources[name] = found[1][name], str(found[0])
    for name in FIELDS:
        if not values[name]:
            problems.append(
                f"workspace.{name}=None: set workspace.{name}=..., or {' / '.join(ENV_VARS[name])}, "
                "or download the workspace's config.json into this directory "
                "(or workspace.config_path=FILE); dry_run=true needs none of them"
            )
    return Workspace(**values, sources=sources, problems=problems)


def _config_file(config_path: Optional[str], cwd: Path):
    """``(path, fields)`` of the AML config file in use, and a problem when a named file is unusable."""
    if config_path:
        path = Path(config_path).expanduser()
        if not path.is_file():
            return None, f"workspace.config_path={config_path}: no such file"
        fields = _read(path)
        if fields is None:
            return None, (
                f"workspace.config_path={config_path}: not an AML config.json (needs subscription_id, "
                "resource_group, workspace_name or Scope)"
            )
        return (path, fields), None
    for name in CONFIG_FILES:
        path = cwd / name
        # A config.json of some other tool is not ours to complain about: it is skipped.
        fields = _read(path) if path.is_file() else None
        if fields is not None:
            return (path, fields), None
    return None, None


def _read(path: Path) -> Optional[Dict[str, str]]:
    """The workspace fields of an AML config file (``MLClient.from_config``'s two layouts), else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    scope = data.get("Scope")
    if isinstance(scope, str):
        pieces = scope.split("/")
        if len(pieces) > 8:
            return {"subscription_id": pieces[2], "resource_group": pieces[4], "workspace_name": pieces[8]}
        return None
    if any(data.get(name) for name in FIELDS):
        return {name: data[name] for name in FIELDS if data.get(name)}
    return None


def from_job_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The workspace of the AML job this process runs in (variables AML sets in every job)."""
    environ = os.environ if environ is None else environ
    missing = [variable for variable in JOB_ENV_VARS.values() if not environ.get(variable)]
    if missing:
        raise UserError(f"not inside an Azure ML job: {', '.join(missing)} unset")
    return {name: environ[variable] for name, variable in JOB_ENV_VARS.items()}
