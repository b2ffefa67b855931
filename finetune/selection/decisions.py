"""The words of deciding, typed: a candidate's decision rule, the settings it is chosen with, the selection's verdict.

Three things used to share the name "decision": the rule a candidate ships in ``candidate.json`` (how its
probabilities become labels: :class:`DecisionRule`), the select settings that rule is chosen on val with
(:class:`DecisionSettings`), and what selection concludes about production (:class:`Verdict`). This module
loads no third-party library, so the plan's results and the AML step files can hold them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Dict, Literal, Optional

RuleKind = Literal["argmax", "threshold", "class_weights", "per_label_thresholds"]


@dataclass(frozen=True)
class DecisionRule:
    """The rule a candidate ships (``decision`` in candidate.json), applied by :func:`finetune.serve.score.decide`.

    ``rule`` says which of the optional fields apply: ``threshold`` (binary: ``positive_label`` when its
    probability reaches ``threshold``), ``class_weights`` (multiclass: argmax of probability x ``weights``, the
    inverse train prior to the power ``prior_strength``), ``per_label_thresholds`` (multi-label:
    ``thresholds`` per label) or ``argmax``. ``metric``, ``val`` and ``val_argmax`` record what it was chosen
    for and its val value at the rule and at argmax, so a reader sees what the rule bought.
    """

    rule: RuleKind = "argmax"
    positive_label: Optional[str] = None
    threshold: Optional[float] = None
    prior_strength: Optional[float] = None
    weights: Optional[Dict[str, float]] = None
    thresholds: Optional[Dict[str, float]] = None
    metric: Optional[str] = None
    val: Optional[float] = None
    val_argmax: Optional[float] = None

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "DecisionRule":
        """A shipped ``decision`` (None, in candidates from before rules existed, is argmax)."""
        data = data or {}
        unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"decision rule {data.get('rule')!r} has keys no rule has: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        """candidate.json's ``decision``: the fields that apply, in the order shipped models have them."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}

    def with_val(self, metric: str, val: float, val_argmax: float) -> "DecisionRule":
        return dataclasses.replace(self, metric=metric, val=val, val_argmax=val_argmax)


def recorded_rule(shipped: Optional[dict]) -> Optional[DecisionRule]:
    """A result's record of a rule, where None means none was recorded (not argmax, as in candidate.json)."""
    return None if shipped is None else DecisionRule.from_dict(shipped)


@dataclass(frozen=True)
class DecisionSettings:
    """What a candidate's rule is chosen on val for: ``select.decision_metric``, ``select.multiclass_rule`` and
    the train split's class counts (the prior that ``class_weights`` corrects for; None: val's own counts)."""

    metric: str = "f1_macro"
    multiclass_rule: str = "auto"
    train_counts: Optional[Dict[str, int]] = None

    @classmethod
    def of(cls, select_cfg, data_info: dict) -> "DecisionSettings":
        """From the select config and the prepared data's summary (``splits.train.class_counts``)."""
        return cls(
            metric=select_cfg.decision_metric,
            multiclass_rule=select_cfg.multiclass_rule,
            train_counts=data_info.get("splits", {}).get("train", {}).get("class_counts"),
        )


class Verdict(str, Enum):
    """What selection concludes; summary.json, model_ref.json and the registry tag ``selection.decision`` hold
    its value."""

    # A new candidate wins: it beats production by more than select.margin, or there is no production to beat.
    REGISTER = "register"
    # Production stays: no new candidate beats it by more than the margin, or none could be scored.
    KEEP_PRODUCTION = "keep_production"

    def __str__(self) -> str:
        return self.value
