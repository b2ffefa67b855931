"""What the emulation tests share: export a plan's AML tree as ``dry_run=true`` does, run trees through
``scripts/aml_emulate.py`` as a user would, and read back what the workspace holds afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from .recorder import build

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "aml_emulate.py"


def export_tree(overrides: List[str], out: Path, name: str = "ci") -> Path:
    """The exported tree of a plan (what `python -m finetune ... dry_run=true` writes)."""
    from finetune.data import prepare
    from finetune.launch.azureml import export

    plan = build(list(overrides) + ["dry_run=true"], out, name)
    return export.write(plan, prepare(plan.dataset, Path(plan.run_dir) / "data")).folder


def emulate(trees: List[Path], work: Path, timeout: int = 1200) -> tuple:
    """``(completed process, results)``: results is a list of node dicts (``tree`` names the tree of each)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, trees), "--work", str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    path = work / "emulation.json"
    return completed, json.loads(path.read_text()) if path.is_file() else []


def by_node(results: List[dict], tree: Path = None) -> dict:
    return {r["node"]: r for r in results if tree is None or Path(r["tree"]) == Path(tree).resolve()}


def rollouts(work: Path) -> List[dict]:
    """Every deploy step's rollout.json, in the order the jobs ran."""
    return [
        json.loads(path.read_text()) for path in sorted((work / "jobs").glob("*-deploy/outputs/rollout/rollout.json"))
    ]


def failure(completed) -> str:
    return completed.stdout[-4000:] + completed.stderr[-3000:]
