"""summary.json: a local run's record, every stage's result (:mod:`finetune.plan.results`) as the stage made it,
rewritten atomically after each stage so an interrupted run still shows what it finished, with each stage's
seconds; :meth:`RunSummary.load` types a saved one again so its report can be rewritten (docs/contracts.md).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from finetune.data.prepared import PreparedData
from finetune.plan.results import Candidate, Registration, SelectionResult, SweepResult
from finetune.serve.rollout import DeploymentResult
from finetune.system.files import write_json_atomic

if TYPE_CHECKING:
    from finetune.plan.run_plan import RunPlan


SCHEMA_VERSION = 1


class RunSummary:
    """summary.json of a local run: every stage's result, rewritten (atomically) after each stage, so an
    interrupted run still shows what it finished."""

    def __init__(self, path: Path, run: dict):
        self.path = Path(path)
        self.run = run
        self.data: Optional["PreparedData"] = None
        self.candidates: Dict[str, Candidate] = {}
        self.training: Optional[dict] = None
        self.sweep: Optional[SweepResult] = None
        self.selection: Optional[SelectionResult] = None
        self.registration: Optional[Registration] = None
        self.rollout: Optional["DeploymentResult"] = None
        self.figures: Optional[List[str]] = None
        self.budget: Optional[dict] = None  # budget vs spent per stage (finetune.budget.spent)
        self.started = time.time()
        self._stage: Optional[str] = None
        self._stage_started = self.started

    @classmethod
    def start(cls, plan: "RunPlan") -> "RunSummary":
        return cls(
            Path(plan.run_dir) / "summary.json",
            {
                "name": plan.name,
                "run_dir": plan.run_dir,
                "launcher": plan.launcher,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "stages": plan.stages,
            },
        )

    @classmethod
    def load(cls, run_dir: Path | str) -> "RunSummary":
        """A run's summary.json typed again, so its report can be rewritten from the run folder."""
        path = Path(run_dir) / "summary.json"
        saved = json.loads(path.read_text(encoding="utf-8"))
        summary = cls(path, saved.get("run") or {})
        summary.data = PreparedData.from_dict(saved["data"]) if saved.get("data") else None
        # A candidate's ``test`` and ``decision`` are the selection's, added when summary.json is written.
        summary.candidates = {
            name: Candidate.from_dict({key: value for key, value in entry.items() if key not in ("test", "decision")})
            for name, entry in (saved.get("candidates") or {}).items()
        }
        summary.training = saved.get("training")
        readers = {
            "sweep": SweepResult.from_dict,
            "selection": SelectionResult.from_dict,
            "registry": Registration.from_dict,
            "rollout": DeploymentResult.from_dict,
        }
        summary.sweep, summary.selection, summary.registration, summary.rollout = (
            readers[key](saved[key]) if saved.get(key) else None for key in readers
        )
        summary.figures = saved.get("figures")
        summary.budget = saved.get("budget")
        return summary

    def to_dict(self) -> dict:
        candidates = {}
        for name, candidate in self.candidates.items():
            entry = candidate.to_dict()
            if self.selection is not None and self.selection.test(name) is not None:
                rule = self.selection.decision_rule(name)
                entry.update(test=self.selection.test(name), decision=rule.to_dict() if rule is not None else None)
            candidates[name] = entry
        sections: Dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": self.run,
            "data": self.data.to_dict() if self.data is not None else None,
            "candidates": candidates,
            "training": self.training,
            "sweep": self.sweep.to_dict() if self.sweep is not None else None,
            "selection": self.selection.to_dict() if self.selection is not None else None,
            "registry": self.registration.to_dict() if self.registration is not None else None,
            "rollout": self.rollout.to_dict() if self.rollout is not None else None,
            "figures": self.figures,
            "budget": self.budget,
        }
        return {key: value for key, value in sections.items() if value is not None or key == "candidates"}

    def save(self) -> None:
        write_json_atomic(self.path, self.to_dict(), indent=2, default=str)

    def enter(self, stage: Optional[str]) -> None:
        """Stop the running stage's clock (into ``run.stage_seconds``) and start ``stage``'s (None: stop only)."""
        now = time.time()
        if self._stage is not None:
            spent = self.run.setdefault("stage_seconds", {})
            spent[self._stage] = round(spent.get(self._stage, 0.0) + now - self._stage_started, 1)
        self._stage, self._stage_started = stage, now

    def finish(self) -> None:
        self.run["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.run["duration_s"] = round(time.time() - self.started, 1)
        self.save()
