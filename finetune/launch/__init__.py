"""Launchers execute a run plan: `local` runs every stage on this machine, `azureml` submits to AML."""
from __future__ import annotations

from finetune.plan import RunPlan


def run_plan(plan: RunPlan) -> None:
    if plan.launcher == "azureml":
        from finetune.launch import azureml as launcher
    else:
        from finetune.launch import local as launcher
    launcher.run(plan)
