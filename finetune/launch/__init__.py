"""Launchers execute a run plan: `local` runs every stage on this machine, `azureml` submits to AML.

Each launcher is a module registered in ``LAUNCHERS`` under the compute target it runs on, and provides:

- ``auto_choices(cfg)``: what ``automl=auto`` and ``endpoint=auto`` select on it (config group -> option);
- ``check(plan)``: its own rules of the plan check, one line per problem;
- ``resolve(plan)``: the checked plan with what the launcher decides filled in (AML's time limits);
- ``separate(plans)``: the plans of one multirun, changed where they would collide on it;
- ``run(plan)``.

A module is imported when a plan needs it: a local plan never loads the AML launcher.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from finetune.plan.run_plan import RunPlan

LAUNCHERS = {"local": "finetune.launch.local", "azureml": "finetune.launch.azureml"}


def launcher_name(target: str) -> str:
    """The launcher of ``compute.target``; an unknown target plans as local and the plan check names it."""
    return target if target in LAUNCHERS else "local"


def launcher(name: str) -> ModuleType:
    return importlib.import_module(LAUNCHERS[name])


def separate(plans: list) -> list:
    for name in dict.fromkeys(plan.launcher for plan in plans):
        plans = launcher(name).separate(plans)
    return plans


def run_plan(plan: RunPlan) -> None:
    launcher(plan.launcher).run(plan)
