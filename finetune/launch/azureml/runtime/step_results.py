"""The files the AML register and deploy steps hand on: ``model_ref.json`` and ``rollout.json``, typed.

The local launcher keeps the same results whole in summary.json (:mod:`finetune.plan.results`); on AML each step is
its own job, so the register step writes the selection's verdict for the deploy step to read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from finetune.plan.results import Promotion, drop_none
from finetune.selection.decisions import Verdict

if TYPE_CHECKING:
    from finetune.plan.results import Registration, SelectionResult
    from finetune.serve.rollout import RolloutResult


# The selection's keys model_ref.json repeats: enough to tell from the AML outputs why a version was chosen.
_CHOICE_SELECTION_KEYS = ("metric", "margin", "winner", "decision", "reason", "test", "production_version")


@dataclass
class RegisteredChoice:
    """``model_ref.json``, what the AML register step hands its deploy step: the selection's verdict and, when a
    version was registered, which one (the local launcher keeps the same results whole in summary.json)."""

    verdict: Verdict  # model_ref.json's "decision"
    reason: str
    selection: dict  # the selection section's _CHOICE_SELECTION_KEYS
    name: Optional[str] = None
    version: Optional[str] = None
    candidate: Optional[str] = None  # the winner's name in the selection table
    model_type: Optional[str] = None  # the registered AML asset's type
    existing: Optional[bool] = None
    content_sha256: Optional[str] = None
    promoted: Optional[Promotion] = None  # staged as Production (by the register step when no rollout follows)
    environment: Optional[dict] = None  # the deployment's environment when the model brings its own (AutoML's)

    @classmethod
    def of(cls, selection: SelectionResult, registration: Registration, model_type: str) -> "RegisteredChoice":
        section = selection.to_dict()
        choice = cls(
            verdict=selection.verdict,
            reason=selection.reason,
            selection={key: section.get(key) for key in _CHOICE_SELECTION_KEYS},
        )
        if selection.verdict is not Verdict.REGISTER:
            return choice
        return dataclasses.replace(
            choice,
            name=registration.name,
            version=registration.version,
            candidate=selection.winner,
            model_type=model_type,
            existing=registration.existing,
            content_sha256=registration.content_sha256,
        )

    @classmethod
    def from_dict(cls, data: dict) -> "RegisteredChoice":
        promoted = data.get("promoted")
        return cls(
            **{
                key: data.get(key)
                for key in cls.__dataclass_fields__
                if key not in ("verdict", "selection", "promoted")
            },
            verdict=Verdict(data["decision"]),
            selection=data.get("selection") or {},
            promoted=Promotion(**promoted) if promoted else None,
        )

    def to_dict(self) -> dict:
        if self.verdict is not Verdict.REGISTER:
            return {"decision": self.verdict.value, "reason": self.reason, "selection": self.selection}
        data = {"decision": self.verdict.value, **dataclasses.asdict(self)}
        del data["verdict"]
        return {
            key: value for key, value in data.items() if value is not None or key not in ("promoted", "environment")
        }


@dataclass
class StepRollout:
    """``rollout.json`` of the AML deploy step: the rollout's section as summary.json's ``rollout`` has it (plus
    the version now staged as Production), or why no rollout ran, with the choice it was for."""

    status: str  # succeeded | skipped | failed
    choice: RegisteredChoice
    rollout: Optional["RolloutResult"] = None
    promoted: Optional[Promotion] = None
    reason: Optional[str] = None  # why it was skipped
    error: Optional[str] = None  # why it failed: the endpoint serves what it served before

    def to_dict(self) -> dict:
        if self.rollout is not None:
            return {
                **self.rollout.to_dict(),
                "promoted": None if self.promoted is None else dataclasses.asdict(self.promoted),
            }
        return {
            "status": self.status,
            "model": self.choice.to_dict(),
            **drop_none({"reason": self.reason, "error": self.error}),
        }
