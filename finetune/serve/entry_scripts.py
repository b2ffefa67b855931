"""Which entry script serves a candidate: the classifiers' ``score.py`` or NER's ``ner_score.py`` (both are the AML
``init()``/``run()`` contract, copied as ``score.py`` next to a registered model and into local deployments)."""

from __future__ import annotations

import json
from pathlib import Path

SCORE_SCRIPT = Path(__file__).with_name("score.py")
NER_SCORE_SCRIPT = Path(__file__).with_name("ner_score.py")


def entry_script(model_dir: Path) -> Path:
    """The entry script that serves the candidate in ``model_dir`` (or one folder below it, as AML mounts it):
    NER candidates (``"task": "ner"`` in candidate.json) have their own, every classifier :data:`SCORE_SCRIPT`."""
    model_dir = Path(model_dir)
    found = (
        [model_dir / "candidate.json"]
        if (model_dir / "candidate.json").is_file()
        else sorted(model_dir.glob("*/candidate.json"))
    )
    task = json.loads(found[0].read_text(encoding="utf-8")).get("task") if len(found) == 1 else None
    return task_entry_script(task)


def task_entry_script(task: str | None) -> Path:
    """The entry script of a task's models, for a deployment made before its model is at hand (AML's deploy step)."""
    return NER_SCORE_SCRIPT if task == "ner" else SCORE_SCRIPT
